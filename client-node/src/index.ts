/** @stepstream/client: a TypeScript client for stepstream, generated from protos/. */
export { Run, DEFAULT_ADDRESS } from "./run.js";
export type { ConnectOptions, CreateOptions, Incarnation, ReadOptions, RunEvents, RunInfo, RunStateName, Series } from "./run.js";
export type { Rejection, SenderStats } from "./sender.js";
export { StepstreamError, DOMAIN, codeName } from "./errors.js";
export { RunClient } from "./client.js";
export type { SecurityOptions } from "./client.js";
export {
  ID_RULE,
  MAX_BATCH_POINTS,
  MAX_NAME_BYTES,
  idProblem,
  nameProblem,
  parseRunMoment,
  type RunMoment,
} from "./rules.js";
