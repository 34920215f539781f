/**
 * The wire rules of protos/ (the same as Python's stepstream.rules): checked locally so that a
 * bad argument fails at the call, before any RPC.
 */
import { invalidArgument } from "./errors.js";

export const ID_RULE = "1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit";
const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const MAX_NAME_BYTES = 1024;
export const MAX_BATCH_POINTS = 100_000;
export const MAX_INFLIGHT_PER_STREAM = 64;
export const DESCRIPTION_KEY = "sys/description";

function quote(text: string, limit = 60): string {
  return JSON.stringify(text.length <= limit ? text : text.slice(0, limit - 1) + "…");
}

/** Why `value` is not a valid project, run or writer ID, or undefined when it is. */
export function idProblem(value: string): string | undefined {
  return ID.test(value) ? undefined : `must be ${ID_RULE}`;
}

/** Why `name` is not a valid series or attribute name, or undefined when it is. */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (/\p{Cs}/u.test(name)) return "is not valid UTF-8 (lone surrogates)";
  const size = Buffer.byteLength(name, "utf8");
  if (size > MAX_NAME_BYTES) return `is ${size} bytes long; the limit is ${MAX_NAME_BYTES}`;
  if (name.includes("\0")) return "contains a NUL character";
  return undefined;
}

export function checkId(value: unknown, what: string): string {
  if (typeof value !== "string") throw invalidArgument(`${what} must be a string, got ${typeof value}`);
  const problem = idProblem(value);
  if (problem !== undefined) throw invalidArgument(`${what} ${quote(value)} ${problem}`);
  return value;
}

export function checkName(value: unknown, what: string): string {
  if (typeof value !== "string") throw invalidArgument(`${what} must be a string, got ${typeof value}`);
  const problem = nameProblem(value);
  if (problem !== undefined) throw invalidArgument(`${what} ${quote(value)} ${problem}`);
  return value;
}

export function checkStep(value: unknown, what = "step"): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw invalidArgument(`${what} must be a finite number, got ${String(value)}`);
  }
  return value;
}

export const RUN_MOMENT_FORMAT = "'<run_id>?_step=<N>'";
const RUN_MOMENT_EXAMPLE = "'my-run?_step=200'";
const NUMBER = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;

/** A run and a step: W&B's "<run_id>?_step=<N>" or an object. */
export type RunMoment = string | { runId: string; step: number };

/**
 * Parse W&B's `fork_from` / `resume_from` string "<run_id>?_step=<N>": exactly one key,
 * `_step`, N a finite decimal number. Throws a StepstreamError quoting the expected format.
 */
export function parseRunMoment(value: RunMoment, what: string): { runId: string; step: number } {
  if (typeof value === "object" && value !== null) {
    return { runId: checkId(value.runId, `${what}.runId`), step: checkStep(value.step, `${what}.step`) };
  }
  if (typeof value !== "string") {
    throw invalidArgument(`${what} must be a string ${RUN_MOMENT_FORMAT} (e.g. ${RUN_MOMENT_EXAMPLE})`);
  }
  const bad = (detail: string) =>
    invalidArgument(`${what} ${quote(value)} is not ${RUN_MOMENT_FORMAT} (e.g. ${RUN_MOMENT_EXAMPLE}): ${detail}`);
  const mark = value.indexOf("?");
  if (mark < 0) throw bad("there is no '?_step=<N>' after the run ID");
  const runId = value.slice(0, mark);
  const query = value.slice(mark + 1);
  if (!runId) throw bad("the run ID before '?' is empty");
  if (idProblem(runId) !== undefined) throw bad(`the run ID ${quote(runId)} must be ${ID_RULE}`);
  if (!query) throw bad("nothing follows '?'");
  const pairs = query.split("&");
  if (pairs.length > 1) {
    const keys = pairs.map((p) => `'${p.split("=")[0]}'`).join(", ");
    throw bad(`it has ${pairs.length} keys (${keys}); exactly one, _step, is allowed`);
  }
  const eq = query.indexOf("=");
  const key = eq < 0 ? query : query.slice(0, eq);
  const number = eq < 0 ? "" : query.slice(eq + 1);
  if (key !== "_step") throw bad(`the key must be _step, got ${quote(key)}`);
  if (!number) throw bad("_step has no value");
  if (!NUMBER.test(number)) {
    const lowered = number.toLowerCase().replace(/^[+-]/, "");
    if (["inf", "infinity", "nan"].includes(lowered)) throw bad(`_step must be finite, got ${quote(number)}`);
    throw bad(`_step must be a number, got ${quote(number)}`);
  }
  const step = Number(number);
  if (!Number.isFinite(step)) throw bad(`_step must be finite, got ${quote(number)}`);
  return { runId, step };
}
