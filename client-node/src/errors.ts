/**
 * One error type for everything the client reports: a gRPC status code, the AIP-193 reason
 * and the ErrorInfo metadata the service attached (protos/: every RPC lists its reasons).
 */
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { status as grpcStatus, type Metadata, type ServiceError } from "@grpc/grpc-js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema, type Status } from "./gen/google/rpc/status_pb.js";

/** The service's ErrorInfo domain. */
export const DOMAIN = "stepstream.dev";

/** gRPC status codes by number, e.g. 5 -> "NOT_FOUND". */
export function codeName(code: number): string {
  return (grpcStatus as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
}

export interface StepstreamErrorInit {
  code: number;
  reason: string;
  message: string;
  metadata?: Record<string, string>;
  domain?: string;
  /** For a batch error: the batch's sequence number. */
  sequence?: number;
  /** For a batch error: the points the batch carried (none of them were stored). */
  points?: number;
  cause?: unknown;
}

/** A failure of an RPC, of one batch, or of a local argument check (code INVALID_ARGUMENT). */
export class StepstreamError extends Error {
  /** gRPC status code (numeric, as @grpc/grpc-js `status`). */
  readonly code: number;
  /** UPPER_SNAKE reason, e.g. RUN_NOT_FOUND; "INVALID_ARGUMENT" for local checks. */
  readonly reason: string;
  /** ErrorInfo.metadata: every value the message quotes. */
  readonly metadata: Readonly<Record<string, string>>;
  /** ErrorInfo.domain ("stepstream.dev" for the service's errors, "" for local ones). */
  readonly domain: string;
  readonly sequence: number | undefined;
  readonly points: number | undefined;

  constructor(init: StepstreamErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "StepstreamError";
    this.code = init.code;
    this.reason = init.reason;
    this.metadata = Object.freeze({ ...(init.metadata ?? {}) });
    this.domain = init.domain ?? "";
    this.sequence = init.sequence;
    this.points = init.points;
  }

  /** The code's name, e.g. "FAILED_PRECONDITION". */
  get codeName(): string {
    return codeName(this.code);
  }

  /** True for the one code that is always safe to retry unchanged (UNAVAILABLE). */
  get retryable(): boolean {
    return this.code === grpcStatus.UNAVAILABLE;
  }

  /** From a google.rpc.Status (an AppendPointsResponse.error, or a call's status details). */
  static fromStatus(
    status: Status,
    extra: { sequence?: number; points?: number; cause?: unknown } = {},
  ): StepstreamError {
    let reason = codeName(status.code);
    let domain = "";
    let metadata: Record<string, string> = {};
    for (const detail of status.details) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info !== undefined) {
        reason = info.reason;
        domain = info.domain;
        metadata = { ...info.metadata };
        break;
      }
    }
    return new StepstreamError({
      code: status.code,
      reason,
      message: status.message,
      metadata,
      domain,
      ...extra,
    });
  }

  /** From a failed @grpc/grpc-js call, decoding the grpc-status-details-bin trailer. */
  static fromGrpc(err: ServiceError | (Error & { code?: number; metadata?: Metadata })): StepstreamError {
    const code = typeof err.code === "number" ? err.code : grpcStatus.UNKNOWN;
    const raw = err.metadata?.get("grpc-status-details-bin")?.[0];
    if (raw instanceof Buffer) {
      try {
        return StepstreamError.fromStatus(fromBinary(StatusSchema, raw), { cause: err });
      } catch {
        // fall through: a trailer we cannot decode is no reason to lose the error itself
      }
    }
    const details = (err as ServiceError).details ?? err.message;
    return new StepstreamError({ code, reason: codeName(code), message: details, cause: err });
  }
}

/** A local argument check failed. */
export function invalidArgument(message: string): StepstreamError {
  return new StepstreamError({ code: grpcStatus.INVALID_ARGUMENT, reason: "INVALID_ARGUMENT", message });
}
