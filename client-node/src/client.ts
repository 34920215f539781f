/** Unary and server-streaming calls of RunService over one @grpc/grpc-js channel. */
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { DescMethod } from "@bufbuild/protobuf";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { StepstreamError } from "./errors.js";
import { RunService, type ReadSeriesRequest, type ReadSeriesResponse } from "./gen/stepstream/v1/runs_pb.js";

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  "grpc.keepalive_time_ms": 20_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_receive_message_length": 64 * 1024 * 1024,
  "grpc.initial_reconnect_backoff_ms": 50,
  "grpc.max_reconnect_backoff_ms": 2_000,
};

export function path(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

export function serializer<D extends DescMessage>(schema: D): (m: MessageShape<D>) => Buffer {
  return (m) => Buffer.from(toBinary(schema, m));
}

export function deserializer<D extends DescMessage>(schema: D): (b: Buffer) => MessageShape<D> {
  return (b) => fromBinary(schema, b);
}

type Methods = typeof RunService.method;

/** How a channel authenticates (README: Security); each defaults to its environment variable. */
export interface SecurityOptions {
  /** Access token of a service run with --auth required (default $STEPSTREAM_TOKEN). */
  token?: string;
  /** TLS with the system's roots (default: $STEPSTREAM_TLS=1, or when a CA is given). */
  tls?: boolean;
  /** PEM file of the CA to trust; implies TLS (default $STEPSTREAM_TLS_CA). */
  rootCertificates?: string;
  /** mTLS: PEM files of the client's certificate chain and key ($STEPSTREAM_TLS_CERT/_KEY). */
  clientCertificate?: string;
  clientKey?: string;
}

function pem(path: string | undefined, env: string): Buffer | undefined {
  const chosen = path ?? process.env[env];
  return chosen ? readFileSync(chosen) : undefined;
}

/** Channel credentials and the interceptor that sends the token on every call. */
export function channelSecurity(options: SecurityOptions): { credentials: grpc.ChannelCredentials; interceptors: grpc.Interceptor[] } {
  const roots = pem(options.rootCertificates, "STEPSTREAM_TLS_CA");
  const cert = pem(options.clientCertificate, "STEPSTREAM_TLS_CERT");
  const key = pem(options.clientKey, "STEPSTREAM_TLS_KEY");
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error("clientCertificate and clientKey go together: give both or neither");
  }
  const tls = options.tls ?? (["1", "true", "yes"].includes((process.env.STEPSTREAM_TLS ?? "").toLowerCase()) || roots !== undefined || cert !== undefined);
  const credentials = tls ? grpc.credentials.createSsl(roots ?? null, key ?? null, cert ?? null) : grpc.credentials.createInsecure();
  const token = options.token ?? (process.env.STEPSTREAM_TOKEN || undefined);
  const interceptors: grpc.Interceptor[] = [];
  if (token) {
    interceptors.push(
      (callOptions, nextCall) =>
        new grpc.InterceptingCall(nextCall(callOptions), {
          start(metadata, listener, next) {
            metadata.set("authorization", `Bearer ${token}`);
            next(metadata, listener);
          },
        }),
    );
  }
  return { credentials, interceptors };
}

/** RunService, each method returning a promise that rejects with a StepstreamError. */
export class RunClient {
  readonly grpc: grpc.Client;
  private readonly timeoutMs: number;

  constructor(address: string, options: SecurityOptions & { timeoutMs?: number; credentials?: grpc.ChannelCredentials } = {}) {
    const security = channelSecurity(options);
    this.grpc = new grpc.Client(address, options.credentials ?? security.credentials, {
      ...CHANNEL_OPTIONS,
      interceptors: security.interceptors,
    });
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  call<K extends Exclude<keyof Methods, "readSeries">>(
    name: K,
    request: MessageInitShape<Methods[K]["input"]>,
  ): Promise<MessageShape<Methods[K]["output"]>> {
    const method = RunService.method[name] as DescMethod & { input: Methods[K]["input"]; output: Methods[K]["output"] };
    const message = create(method.input, request);
    return new Promise((resolve, reject) => {
      this.grpc.makeUnaryRequest(
        path(method),
        serializer(method.input),
        deserializer(method.output),
        message,
        new grpc.Metadata(),
        { deadline: Date.now() + this.timeoutMs },
        (err, value) => (err || value === undefined ? reject(StepstreamError.fromGrpc(err!)) : resolve(value)),
      );
    });
  }

  /** Every ReadSeriesResponse of one ReadSeries call, in order. */
  readSeries(request: MessageInitShape<typeof RunService.method.readSeries.input>): Promise<ReadSeriesResponse[]> {
    const method = RunService.method.readSeries;
    const message: ReadSeriesRequest = create(method.input, request);
    return new Promise((resolve, reject) => {
      const out: ReadSeriesResponse[] = [];
      const call = this.grpc.makeServerStreamRequest(
        path(method),
        serializer(method.input),
        deserializer(method.output),
        message,
        new grpc.Metadata(),
        { deadline: Date.now() + this.timeoutMs },
      );
      // Done when the messages have ended and the status is OK (either may come first).
      let ended = false;
      let ok = false;
      call.on("data", (m: ReadSeriesResponse) => out.push(m));
      call.on("error", (err: grpc.ServiceError) => reject(StepstreamError.fromGrpc(err)));
      call.on("status", (status: grpc.StatusObject) => {
        ok = status.code === grpc.status.OK;
        if (ok && ended) resolve(out);
      });
      call.on("end", () => {
        ended = true;
        if (ok) resolve(out);
      });
    });
  }

  close(): void {
    this.grpc.close();
  }
}
