/**
 * `Run`: what a trainer logs to. `log()` never waits on the network; it returns a promise only
 * when the buffer is over its bound (await it: Node cannot block). Rejections and batch errors
 * arrive as events and are kept in `errors`.
 */
import { EventEmitter } from "node:events";
import { randomUUID } from "node:crypto";
import type { JsonObject } from "@bufbuild/protobuf";
import { RunClient, type SecurityOptions } from "./client.js";
import { StepstreamError, invalidArgument } from "./errors.js";
import {
  IncarnationOrigin,
  RunState,
  type Incarnation as IncarnationProto,
  type Run as RunProto,
} from "./gen/stepstream/v1/runs_pb.js";
import {
  MAX_BATCH_POINTS,
  MAX_INFLIGHT_PER_STREAM,
  checkId,
  checkName,
  checkStep,
  parseRunMoment,
  type RunMoment,
} from "./rules.js";
import { Sender, type Rejection, type SenderStats } from "./sender.js";
import { parseTypedJson } from "./typedjson.js";

export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** The address to use when none is given: $STEPSTREAM_ADDRESS, else 127.0.0.1:50051. */
function defaultAddress(): string {
  return process.env.STEPSTREAM_ADDRESS || DEFAULT_ADDRESS;
}

export interface ConnectOptions extends SecurityOptions {
  /** host:port of the service (default $STEPSTREAM_ADDRESS, else 127.0.0.1:50051). */
  address?: string;
  /** Project; default "default". */
  project?: string;
  /** Stable writer ID for this Run's stream (default: a random one). */
  writerId?: string;
  /** Points per batch, at most 100,000 (the service's limit). */
  maxBatchPoints?: number;
  /** Points buffered before log() asks the caller to wait (default 2,000,000). */
  maxBufferedPoints?: number;
  /** How long a partly filled batch waits for more rows (default 50 ms). */
  lingerMs?: number;
  /** How long to keep reconnecting before failing (default 120 s). */
  reconnectTimeoutMs?: number;
  /** Reopen the stream when sent batches wait this long for an answer (default 30 s). */
  ackTimeoutMs?: number;
  /** Deadline of unary calls (default 30 s). */
  timeoutMs?: number;
}

export interface CreateOptions extends ConnectOptions {
  /** Run ID; empty: the service generates one. */
  runId?: string;
  experiment?: string;
  tags?: string[];
  description?: string;
  config?: JsonObject;
  /** Fork from "<run_id>?_step=<N>" (W&B fork_from) or {runId, step}. */
  forkFrom?: RunMoment;
  /** Rewind this run: "<run_id>?_step=<N>" (W&B resume_from) or {runId, step}. */
  resumeFrom?: RunMoment;
  /** With forkFrom: inherit the parent's config too. */
  inheritConfigs?: boolean;
  /** Attach to the run when it exists instead of failing with RUN_ALREADY_EXISTS. */
  getIfExists?: boolean;
}

export type RunStateName = "RUNNING" | "STOPPED" | "FINISHED" | "FAILED" | "UNSPECIFIED";

export interface Incarnation {
  incarnationId: string;
  runId: string;
  parentIncarnationId: string;
  parentRunId: string;
  forkStep: number | undefined;
  origin: "CREATED" | "FORKED" | "REWOUND" | "UNSPECIFIED";
  archived: boolean;
}

export interface RunInfo {
  project: string;
  runId: string;
  experiment: string;
  state: RunStateName;
  tags: string[];
  description: string;
  config: JsonObject;
  values: JsonObject;
  currentIncarnationId: string;
  incarnations: Incarnation[];
  failureReason: string;
  url: string;
}

export interface Series {
  name: string;
  steps: Float64Array;
  /** Values of a float series. */
  values: Float64Array;
  timestamps: Float64Array;
}

export interface ReadOptions {
  stepMin?: number;
  stepMax?: number;
  /** Downsample to at most this many points per series (at least 5). */
  maxPoints?: number;
  /** Only the points this incarnation stored itself, not the inherited ones. */
  ownPointsOnly?: boolean;
  /** Read this exact incarnation (archived ones too) instead of the run's current view. */
  incarnationId?: string;
}

export interface RunEvents {
  rejection: [Rejection];
  batchError: [StepstreamError];
  reconnect: [number, StepstreamError];
}

export class Run extends EventEmitter<RunEvents> {
  /** Batch errors and rejections seen so far, in order. */
  readonly errors: Array<StepstreamError | Rejection> = [];
  readonly project: string;
  readonly runId: string;
  readonly writerId: string;
  /** True when forkFrom named a run that does not exist and the experiment's head was used. */
  parentFallback = false;
  private info: RunInfo;
  private readonly client: RunClient;
  private readonly sender: Sender;
  private closed = false;

  private constructor(client: RunClient, info: RunInfo, options: ConnectOptions) {
    super();
    this.client = client;
    this.info = info;
    this.project = info.project;
    this.runId = info.runId;
    this.writerId = options.writerId === undefined ? randomUUID() : checkId(options.writerId, "writerId");
    const maxBatchPoints = options.maxBatchPoints ?? MAX_BATCH_POINTS;
    if (!(maxBatchPoints >= 1 && maxBatchPoints <= MAX_BATCH_POINTS)) {
      throw invalidArgument(`maxBatchPoints must be 1..${MAX_BATCH_POINTS}, got ${maxBatchPoints}`);
    }
    this.sender = new Sender(client.grpc, {
      project: info.project,
      runId: info.runId,
      writerId: this.writerId,
      maxBatchPoints,
      maxBufferedPoints: options.maxBufferedPoints ?? 2_000_000,
      maxInflight: MAX_INFLIGHT_PER_STREAM,
      lingerMs: options.lingerMs ?? 50,
      reconnectTimeoutMs: options.reconnectTimeoutMs ?? 120_000,
      ackTimeoutMs: options.ackTimeoutMs ?? 30_000,
      onRejection: (r) => {
        this.errors.push(r);
        this.emit("rejection", r);
      },
      onBatchError: (e) => {
        this.errors.push(e);
        this.emit("batchError", e);
      },
      onReconnect: (attempt, cause) => this.emit("reconnect", attempt, cause),
    });
  }

  /** Creates a run (or forks one, or rewinds one with resumeFrom) and opens its stream. */
  static async create(options: CreateOptions = {}): Promise<Run> {
    if (options.forkFrom !== undefined && options.resumeFrom !== undefined) {
      throw invalidArgument("give forkFrom or resumeFrom, not both");
    }
    if (options.resumeFrom !== undefined) return Run.rewind(options.resumeFrom, options);
    const project = options.project ?? "";
    if (project) checkId(project, "project");
    const runId = options.runId ?? "";
    if (runId) checkId(runId, "runId");
    if (options.experiment !== undefined) checkName(options.experiment, "experiment");
    for (const tag of options.tags ?? []) checkName(tag, "tag");
    const fork = options.forkFrom === undefined ? undefined : parseRunMoment(options.forkFrom, "forkFrom");
    if (fork && fork.runId === runId) {
      throw invalidArgument(`forkFrom names the run itself (${runId}); to rewind it use resumeFrom`);
    }
    return Run.open(options, async (client) => {
      const response = await client.call("createRun", {
        project,
        runId,
        experiment: options.experiment ?? "",
        tags: options.tags ?? [],
        description: options.description ?? "",
        config: options.config ?? {},
        forkRunId: fork?.runId ?? "",
        forkStep: fork?.step,
        inheritConfigs: options.inheritConfigs ?? false,
        getIfExists: options.getIfExists ?? false,
      });
      return { run: response.run!, parentFallback: response.parentFallback };
    });
  }

  /** Forks `parent` ("<run_id>?_step=<N>" or {runId, step}) into a new run. */
  static fork(parent: RunMoment, options: Omit<CreateOptions, "forkFrom" | "resumeFrom"> = {}): Promise<Run> {
    return Run.create({ ...options, forkFrom: parent });
  }

  /** Attaches to an existing run (RUN_NOT_FOUND when there is none) and opens its stream. */
  static async attach(runId: string, options: ConnectOptions = {}): Promise<Run> {
    checkId(runId, "runId");
    return Run.open(options, (client) => client.call("getRun", { project: options.project ?? "", runId }));
  }

  /** Rewinds an existing run to a step ("<run_id>?_step=<N>", W&B resume_from) and attaches. */
  static async rewind(moment: RunMoment, options: ConnectOptions & { config?: JsonObject } = {}): Promise<Run> {
    const { runId, step } = parseRunMoment(moment, "resumeFrom");
    return Run.open(options, (client) =>
      client.call("rewindRun", { project: options.project ?? "", runId, step, config: options.config ?? {} }),
    );
  }

  /** A channel, the RPC that names the run, then its stream; the channel closes on failure. */
  private static async open(
    options: ConnectOptions,
    fetch: (client: RunClient) => Promise<{ run?: RunProto; parentFallback?: boolean }>,
  ): Promise<Run> {
    const client = new RunClient(options.address ?? defaultAddress(), options);
    try {
      const response = await fetch(client);
      const run = new Run(client, runInfo(response.run!), options);
      run.parentFallback = response.parentFallback ?? false;
      await run.sender.start();
      return run;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /** The incarnation the last acknowledged points went to. */
  get incarnationId(): string {
    return this.sender.incarnationId || this.info.currentIncarnationId;
  }

  /** What the run looked like at the last call that returned it. */
  get lastKnown(): RunInfo {
    return this.info;
  }

  get stats(): Readonly<SenderStats> & { bufferedPoints: number } {
    return { ...this.sender.stats, bufferedPoints: this.sender.bufferedPoints };
  }

  /**
   * Logs one row: `metrics` maps series names to values (NaN and ±Infinity are kept) at
   * `step`. Returns undefined, or a promise to await when the buffer is full.
   */
  log(metrics: Record<string, number>, step: number): Promise<void> | undefined {
    if (this.closed) throw invalidArgument(`run ${this.runId} is closed`);
    if (typeof step !== "number" || !Number.isFinite(step)) checkStep(step);
    return this.sender.add(metrics, step);
  }

  /** Resolves when everything logged so far is acknowledged (durable). */
  flush(): Promise<void> {
    return this.sender.flush();
  }

  /** Rewinds this run to `step` (after a flush): logging resumes above it. */
  async rewind(step: number, config: JsonObject = {}): Promise<RunInfo> {
    checkStep(step);
    await this.flush();
    return this.update(await this.client.call("rewindRun", { project: this.project, runId: this.runId, step, config }));
  }

  async stop(): Promise<RunInfo> {
    await this.flush();
    return this.update(await this.client.call("stopRun", { project: this.project, runId: this.runId }));
  }

  async resume(): Promise<RunInfo> {
    return this.update(await this.client.call("resumeRun", { project: this.project, runId: this.runId }));
  }

  async getRun(): Promise<RunInfo> {
    return this.update(await this.client.call("getRun", { project: this.project, runId: this.runId }));
  }

  /** Float series of this run (inherited points included unless ownPointsOnly). */
  async readSeries(names: string[] = [], options: ReadOptions = {}): Promise<Map<string, Series>> {
    const selector = options.incarnationId
      ? { project: this.project, incarnationId: options.incarnationId, ownPointsOnly: options.ownPointsOnly ?? false }
      : { project: this.project, runId: this.runId, ownPointsOnly: options.ownPointsOnly ?? false };
    const messages = await this.client.readSeries({
      selector,
      names,
      stepMin: options.stepMin,
      stepMax: options.stepMax,
      maxPoints: options.maxPoints,
    });
    const parts = new Map<string, { steps: number[][]; values: number[][]; timestamps: number[][] }>();
    for (const m of messages) {
      if (m.stringSeries) continue;
      let part = parts.get(m.name);
      if (part === undefined) parts.set(m.name, (part = { steps: [], values: [], timestamps: [] }));
      part.steps.push(m.steps);
      part.values.push(m.values);
      part.timestamps.push(m.timestamps);
    }
    const out = new Map<string, Series>();
    for (const [name, p] of parts) {
      out.set(name, { name, steps: concat(p.steps), values: concat(p.values), timestamps: concat(p.timestamps) });
    }
    return out;
  }

  /**
   * Flushes, then ends the run FINISHED (or leaves its state with {finish: false}) and closes
   * the connection. Rejects with the stream's fatal error, if any.
   */
  async close(options: { finish?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.sender.close();
      if (this.sender.fatal) throw this.sender.fatal;
      if (options.finish ?? true) {
        this.update(await this.client.call("finishRun", { project: this.project, runId: this.runId }));
      }
    } finally {
      this.client.close();
    }
  }

  private update(response: { run?: RunProto }): RunInfo {
    if (response.run) this.info = runInfo(response.run);
    return this.info;
  }
}

function concat(chunks: number[][]): Float64Array {
  const out = new Float64Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function incarnation(i: IncarnationProto): Incarnation {
  return {
    incarnationId: i.incarnationId,
    runId: i.runId,
    parentIncarnationId: i.parentIncarnationId,
    parentRunId: i.parentRunId,
    forkStep: i.parentIncarnationId ? i.forkStep : undefined,
    origin: (IncarnationOrigin[i.origin] ?? "INCARNATION_ORIGIN_UNSPECIFIED").replace("INCARNATION_ORIGIN_", "") as Incarnation["origin"],
    archived: i.archived,
  };
}

export function runInfo(run: RunProto): RunInfo {
  return {
    project: run.project,
    runId: run.runId,
    experiment: run.experiment,
    state: (RunState[run.state] ?? "RUN_STATE_UNSPECIFIED").replace("RUN_STATE_", "") as RunStateName,
    tags: [...run.tags],
    description: run.description,
    // The typed JSON when the service sends it (NaN and ±Infinity survive), else the Struct.
    config: run.configJson ? parseTypedJson(run.configJson) : (run.config ?? {}),
    values: run.valuesJson ? parseTypedJson(run.valuesJson) : (run.values ?? {}),
    currentIncarnationId: run.currentIncarnationId,
    incarnations: run.incarnations.map(incarnation),
    failureReason: run.failureReason,
    url: run.url,
  };
}
