/**
 * The stream behind a Run: batches get consecutive sequence numbers and stay in `unacked` until
 * the service answers them; a failed stream is reopened (50 ms doubling to 2 s, with jitter,
 * for up to reconnectTimeoutMs) and every unanswered batch is re-sent with its original writer
 * ID and sequence number, which the service applies exactly once (ingest.proto).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { Batcher, type EncodedBatch } from "./batcher.js";
import { path } from "./client.js";
import { StepstreamError } from "./errors.js";
import {
  AppendPointsRequestSchema,
  AppendPointsResponseSchema,
  IngestService,
  type AppendPointsResponse,
  type OpenStreamResult,
} from "./gen/stepstream/v1/ingest_pb.js";

/** Codes after which the stream is reopened and unanswered batches re-sent. */
const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.CANCELLED,
  grpc.status.INTERNAL,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNKNOWN,
]);
const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2_000;

/** Points of one series rejected in one batch (AppendResult.rejections). */
export interface Rejection {
  series: string;
  reason: string;
  message: string;
  count: number;
  /** NaN unless reason is STEP_NOT_INCREASING with explicit steps. */
  firstStep: number;
  lastStep: number;
  floor: number;
  stringSeries: boolean;
  sequence: number;
}

export interface SenderOptions {
  project: string;
  runId: string;
  writerId: string;
  maxBatchPoints: number;
  maxBufferedPoints: number;
  maxInflight: number;
  lingerMs: number;
  reconnectTimeoutMs: number;
  /** Sent batches waiting this long for their next answer: the stream is reopened. */
  ackTimeoutMs: number;
  onRejection: (r: Rejection) => void;
  onBatchError: (e: StepstreamError) => void;
  onReconnect: (attempt: number, cause: StepstreamError) => void;
}

type Duplex = grpc.ClientDuplexStream<Buffer, AppendPointsResponse>;

export interface SenderStats {
  acceptedPoints: number;
  duplicatePoints: number;
  rejectedPoints: number;
  duplicateBatches: number;
  batches: number;
  connections: number;
}

export class Sender {
  readonly stats: SenderStats = {
    acceptedPoints: 0,
    duplicatePoints: 0,
    rejectedPoints: 0,
    duplicateBatches: 0,
    batches: 0,
    connections: 0,
  };
  incarnationId = "";
  fatal: StepstreamError | undefined;

  private readonly batcher: Batcher;
  private readonly unacked = new Map<number, EncodedBatch>();
  private unackedPoints = 0;
  private nextSequence: number | undefined;
  private lastAnswered = 0;
  private call: Duplex | undefined;
  private open = false;
  private writtenUpTo = 0; // highest sequence written on the current stream
  private inflight = 0;
  private linger: NodeJS.Timeout | undefined;
  private reconnect: NodeJS.Timeout | undefined;
  private ackClock: NodeJS.Timeout | undefined;
  private failingSince: number | undefined;
  private backoff = BACKOFF_MIN_MS;
  private attempts = 0;
  private closing = false;
  private roomWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private drainWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private openWaiter: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  private readonly openBytes: Buffer;

  constructor(
    private readonly channel: grpc.Client,
    private readonly options: SenderOptions,
  ) {
    this.batcher = new Batcher(options.maxBatchPoints);
    this.openBytes = Buffer.from(
      toBinary(
        AppendPointsRequestSchema,
        create(AppendPointsRequestSchema, {
          kind: {
            case: "open",
            value: { project: options.project, runId: options.runId, writerId: options.writerId },
          },
        }),
      ),
    );
  }

  /** Opens the first stream; rejects when the service refuses it (e.g. RUN_NOT_FOUND). */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.openWaiter = { resolve, reject };
      this.connect();
    });
  }

  /** Points buffered and not yet acknowledged. */
  get bufferedPoints(): number {
    return this.unackedPoints + this.batcher.points;
  }

  /** Adds one row; returns a promise when the buffer is over its bound (await it). */
  add(metrics: Record<string, number>, step: number): Promise<void> | undefined {
    if (this.fatal) throw this.fatal;
    const now = Date.now() / 1000;
    if (!this.batcher.add(metrics, step, now)) {
      this.seal();
      this.batcher.add(metrics, step, now);
    }
    if (this.batcher.points >= this.options.maxBatchPoints) this.seal();
    else if (this.linger === undefined) {
      this.linger = setTimeout(() => this.seal(), this.options.lingerMs);
    }
    if (this.bufferedPoints <= this.options.maxBufferedPoints) return undefined;
    return new Promise((resolve, reject) => this.roomWaiters.push({ resolve, reject }));
  }

  /** Resolves when everything logged so far is acknowledged. */
  flush(): Promise<void> {
    if (this.fatal) return Promise.reject(this.fatal);
    this.seal();
    if (this.unacked.size === 0) return Promise.resolve();
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  /** Flushes, then ends the stream. */
  async close(): Promise<void> {
    try {
      if (!this.fatal) await this.flush();
    } finally {
      this.closing = true;
      this.stop();
    }
  }

  private stop(): void {
    this.stopAckClock();
    clearTimeout(this.linger);
    clearTimeout(this.reconnect);
    const call = this.call;
    this.call = undefined;
    this.open = false;
    if (call) {
      call.removeAllListeners();
      call.on("error", () => {}); // the cancellation's own error
      call.cancel();
    }
  }

  private seal(): void {
    clearTimeout(this.linger);
    this.linger = undefined;
    if (this.batcher.points === 0 || this.nextSequence === undefined) return;
    const batch = this.batcher.seal(this.nextSequence++);
    this.unacked.set(batch.sequence, batch);
    this.unackedPoints += batch.points;
    this.pump();
  }

  private pump(): void {
    if (!this.open || !this.call) return;
    for (const batch of this.unacked.values()) {
      if (this.inflight >= this.options.maxInflight) break;
      if (batch.sequence <= this.writtenUpTo) continue;
      this.call.write(batch.bytes);
      this.writtenUpTo = batch.sequence;
      this.inflight++;
    }
    if (this.inflight > 0 && this.ackClock === undefined) this.armAckClock();
  }

  /** A stalled service (SIGSTOP, a hung replica) may keep its connection up: when sent
   * batches wait ackTimeoutMs for their next answer, reopen the stream and re-send them. */
  private armAckClock(): void {
    const call = this.call;
    this.ackClock = setTimeout(() => {
      this.ackClock = undefined;
      if (call === undefined || this.call !== call || (this.open && this.inflight === 0)) return;
      const seconds = this.options.ackTimeoutMs / 1000;
      this.streamFailed(
        call,
        new StepstreamError({
          code: grpc.status.UNAVAILABLE,
          reason: "ACK_TIMEOUT",
          message: this.open
            ? `no answer for ${seconds} s with ${this.inflight} batch(es) sent; reconnecting`
            : `no answer to open for ${seconds} s; reconnecting`,
          metadata: { seconds: String(seconds), inflight: String(this.inflight) },
        }),
      );
    }, this.options.ackTimeoutMs);
  }

  private stopAckClock(): void {
    clearTimeout(this.ackClock);
    this.ackClock = undefined;
  }

  private connect(): void {
    this.reconnect = undefined;
    if (this.closing || this.fatal) return;
    const method = IngestService.method.appendPoints;
    const call = this.channel.makeBidiStreamRequest(
      path(method),
      (b: Buffer) => b,
      (b: Buffer) => fromBinary(AppendPointsResponseSchema, b),
      new grpc.Metadata(),
      {},
    );
    this.call = call;
    this.open = false;
    this.writtenUpTo = 0;
    this.inflight = 0;
    call.on("data", (response: AppendPointsResponse) => {
      if (this.call !== call) return;
      try {
        if (this.open) this.onAnswer(response);
        else this.onOpened(response);
      } catch (err) {
        this.fail(err instanceof StepstreamError ? err : new StepstreamError({ code: grpc.status.INTERNAL, reason: "CLIENT_ERROR", message: String(err) }));
      }
    });
    call.on("error", (err: grpc.ServiceError) => this.streamFailed(call, StepstreamError.fromGrpc(err)));
    call.on("end", () =>
      this.streamFailed(
        call,
        new StepstreamError({ code: grpc.status.UNAVAILABLE, reason: "STREAM_ENDED", message: "the service ended the stream" }),
      ),
    );
    call.write(this.openBytes);
    this.stopAckClock();
    this.armAckClock(); // for the answer to `open`
  }

  private onOpened(response: AppendPointsResponse): void {
    const result = response.result;
    if (result.case === "error") throw StepstreamError.fromStatus(result.value);
    if (result.case !== "opened") {
      throw new StepstreamError({
        code: grpc.status.INTERNAL,
        reason: "UNEXPECTED_ANSWER",
        message: `the service answered OpenStream with ${String(result.case)}`,
      });
    }
    const opened: OpenStreamResult = result.value;
    const committed = Number(opened.lastCommittedSequence);
    if (this.nextSequence === undefined) {
      this.nextSequence = committed + 1;
    } else if (committed >= this.nextSequence) {
      throw new StepstreamError({
        code: grpc.status.FAILED_PRECONDITION,
        reason: "WRITER_ID_CONFLICT",
        message:
          `the service has batches up to ${committed} committed for this writer, but this client ` +
          `sent only up to ${this.nextSequence - 1}: is another client using the same writer ID?`,
        metadata: { committed: String(committed), writer_id: this.options.writerId },
      });
    } else if (committed < this.lastAnswered) {
      throw new StepstreamError({
        code: grpc.status.DATA_LOSS,
        reason: "SEQUENCE_REGRESSION",
        message: `the service reports batches up to ${committed} committed, but it had already answered batch ${this.lastAnswered}`,
      });
    }
    if (opened.incarnationId) this.incarnationId = opened.incarnationId;
    this.open = true;
    this.stopAckClock();
    this.stats.connections++;
    this.failingSince = undefined;
    this.backoff = BACKOFF_MIN_MS;
    this.attempts = 0;
    this.openWaiter?.resolve();
    this.openWaiter = undefined;
    this.pump(); // re-sends every unanswered batch, in order, with its sequence number
  }

  private onAnswer(response: AppendPointsResponse): void {
    let sequence = Number(response.sequence);
    let batch = this.unacked.get(sequence);
    if (batch === undefined && sequence === 0) {
      // An answer to a request the service could not decode: answers come in order.
      const oldest = this.unacked.values().next();
      if (!oldest.done) [batch, sequence] = [oldest.value, oldest.value.sequence];
    }
    if (batch === undefined) return;
    this.unacked.delete(sequence);
    this.unackedPoints -= batch.points;
    this.inflight--;
    this.stopAckClock(); // pump() re-arms it while batches are still out
    this.lastAnswered = Math.max(this.lastAnswered, sequence);
    this.stats.batches++;
    const result = response.result;
    if (result.case === "appended") {
      const r = result.value;
      const accepted = Number(r.acceptedCount);
      const duplicates = Number(r.duplicateCount);
      this.stats.acceptedPoints += accepted;
      this.stats.duplicatePoints += duplicates;
      this.stats.rejectedPoints += Math.max(0, batch.points - accepted - duplicates);
      if (r.duplicateBatch) this.stats.duplicateBatches++;
      if (r.incarnationId) this.incarnationId = r.incarnationId;
      for (const j of r.rejections) {
        this.options.onRejection({
          series: j.series,
          reason: j.reason,
          message: j.message,
          count: Number(j.count),
          firstStep: j.firstStep,
          lastStep: j.lastStep,
          floor: j.floor,
          stringSeries: j.stringSeries,
          sequence,
        });
      }
    } else {
      this.stats.rejectedPoints += batch.points;
      const error =
        result.case === "error"
          ? StepstreamError.fromStatus(result.value, { sequence, points: batch.points })
          : new StepstreamError({
              code: grpc.status.INTERNAL,
              reason: "UNEXPECTED_ANSWER",
              message: `the service answered batch ${sequence} with ${String(result.case)}`,
              sequence,
              points: batch.points,
            });
      this.options.onBatchError(error);
    }
    this.settle();
    this.pump();
  }

  /** Wake whoever waits for room or for the drain. */
  private settle(): void {
    if (this.bufferedPoints <= this.options.maxBufferedPoints && this.roomWaiters.length) {
      for (const w of this.roomWaiters.splice(0)) w.resolve();
    }
    if (this.unacked.size === 0 && this.drainWaiters.length) {
      for (const w of this.drainWaiters.splice(0)) w.resolve();
    }
  }

  private streamFailed(call: Duplex, error: StepstreamError): void {
    if (this.call !== call || this.closing) return;
    this.call = undefined;
    this.open = false;
    this.stopAckClock();
    call.removeAllListeners();
    call.on("error", () => {});
    call.cancel();
    const now = Date.now();
    this.failingSince ??= now;
    const first = this.openWaiter !== undefined && this.stats.connections === 0;
    // A refused first `open` (bad ID, unknown run) is final; so is any non-retryable code.
    if (!RETRYABLE.has(error.code) || (first && error.reason !== "UNAVAILABLE" && error.code !== grpc.status.UNAVAILABLE)) {
      this.fail(error);
      return;
    }
    if (now - this.failingSince >= this.options.reconnectTimeoutMs) {
      this.fail(error);
      return;
    }
    this.attempts++;
    this.options.onReconnect(this.attempts, error);
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.reconnect = setTimeout(() => this.connect(), delay);
  }

  private fail(error: StepstreamError): void {
    if (this.fatal) return;
    this.fatal = error;
    this.stop();
    this.openWaiter?.reject(error);
    this.openWaiter = undefined;
    for (const w of [...this.roomWaiters.splice(0), ...this.drainWaiters.splice(0)]) w.reject(error);
  }
}
