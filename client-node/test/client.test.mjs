// The TypeScript client against a real service (its own redis-server, SQLite store, free port).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { Run, RunClient, StepstreamError, parseRunMoment } from "../dist/index.js";
import { Batcher } from "../dist/batcher.js";
import { AppendPointsRequestSchema } from "../dist/gen/stepstream/v1/ingest_pb.js";
import { Service } from "./harness.mjs";

let service;
let admin;
before(async () => {
  service = await Service.start();
  admin = new RunClient(service.address);
});
after(async () => {
  admin?.close();
  await service?.stop();
});

const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

async function rejectsWith(promise, { code, reason, message, metadata }) {
  const err = await promise.then(
    () => assert.fail("expected a StepstreamError"),
    (e) => e,
  );
  assert.ok(err instanceof StepstreamError, String(err));
  assert.equal(err.code, code);
  assert.equal(err.reason, reason);
  if (message !== undefined) assert.equal(err.message, message);
  if (metadata !== undefined) assert.deepEqual({ ...err.metadata }, metadata);
  return err;
}

describe("ingest and read", () => {
  test("rows become blocks, acknowledged once flushed, read back as Float64Arrays", async () => {
    const run = await Run.create({ address: service.address, runId: "ingest-1", config: { lr: 0.1 } });
    for (const step of range(0, 500)) {
      const wait = run.log({ loss: 1 / (step + 1), inf: Infinity, nan: NaN }, step);
      if (wait) await wait;
    }
    await run.flush();
    assert.equal(run.stats.acceptedPoints, 1500);
    const series = await run.readSeries(["loss", "inf", "nan"]);
    const loss = series.get("loss");
    assert.ok(loss.steps instanceof Float64Array && loss.values instanceof Float64Array);
    assert.deepEqual([...loss.steps], range(0, 500));
    assert.equal(loss.values[9], 1 / 10);
    assert.ok(series.get("nan").values.every(Number.isNaN));
    assert.ok(series.get("inf").values.every((v) => v === Infinity));
    const down = await run.readSeries(["loss"], { maxPoints: 50 });
    assert.ok(down.get("loss").steps.length <= 50);
    await run.close();
    assert.equal(run.lastKnown.state, "FINISHED");
    assert.deepEqual(run.lastKnown.config, { lr: 0.1 });
  });

  test("config sent as a Struct reads back through typed JSON, NaN and Infinity included", async () => {
    const config = { epochs: 3, lr: 0.5, loss: NaN, clip: Infinity, nested: { low: -Infinity, on: true, no: null } };
    const run = await Run.create({ address: service.address, runId: "typed-config", config });
    assert.equal(run.lastKnown.config.epochs, 3);
    assert.ok(Number.isNaN(run.lastKnown.config.loss));
    assert.equal(run.lastKnown.config.clip, Infinity);
    assert.deepEqual(run.lastKnown.config.nested, { low: -Infinity, on: true, no: null });
    await run.close();
  });

  test("the hand-made batch encoding decodes as protobuf-es reads it", () => {
    const batcher = new Batcher(100_000);
    batcher.add({ a: 1, b: NaN }, 0, 10);
    batcher.add({ a: 2, b: -Infinity }, 1, 11);
    batcher.add({ c: 3 }, 1, 12);
    const sealed = batcher.seal(300);
    const request = fromBinary(AppendPointsRequestSchema, sealed.bytes);
    assert.equal(request.kind.case, "batch");
    const batch = request.kind.value;
    assert.equal(batch.sequence, 300n);
    assert.equal(sealed.points, 5);
    assert.deepEqual(
      batch.floatBlocks.map((b) => [b.names, b.steps, b.values, b.timestamps]),
      [
        [["a", "b"], [0, 1], [1, NaN, 2, -Infinity], [10, 11]],
        [["c"], [1], [3], [12]],
      ],
    );
  });

  test("log() asks the caller to wait when the buffer is full, and the wait ends", async () => {
    const run = await Run.create({
      address: service.address,
      runId: "pressure",
      maxBufferedPoints: 1_000,
      maxBatchPoints: 500,
    });
    let waited = 0;
    for (const step of range(0, 2_000)) {
      const wait = run.log({ x: step }, step);
      if (wait) {
        waited++;
        await wait;
      }
      assert.ok(run.stats.bufferedPoints <= 1_000 + 1);
    }
    await run.close();
    assert.ok(waited > 0);
    assert.equal(run.stats.acceptedPoints, 2_000);
  });
});

describe("rejections and batch errors", () => {
  test("steps at or below the floor arrive as typed rejection events", async () => {
    const run = await Run.create({ address: service.address, runId: "rejections" });
    const seen = [];
    run.on("rejection", (r) => seen.push(r));
    run.log({ m: 1 }, 10);
    await run.flush();
    run.log({ m: 1 }, 10); // the very point at the floor: a duplicate, not a rejection
    await run.flush();
    run.log({ m: 2 }, 5);
    await run.flush();
    assert.equal(seen.length, 1);
    const { sequence, ...rest } = seen[0];
    assert.equal(sequence, 3);
    assert.deepEqual(rest, {
      series: "m",
      reason: "STEP_NOT_INCREASING",
      message: "1 point(s) at steps 5.0..5.0 are not above the series' floor 10.0",
      count: 1,
      firstStep: 5,
      lastStep: 5,
      floor: 10,
      stringSeries: false,
    });
    assert.equal(run.stats.duplicatePoints, 1);
    assert.deepEqual(run.errors, seen);
    await run.close();
  });

  test("a stopped run answers RUN_NOT_ACTIVE, which uses up the sequence; after resume the points land", async () => {
    const run = await Run.create({ address: service.address, runId: "stopped" });
    const errors = [];
    run.on("batchError", (e) => errors.push(e));
    await run.stop();
    run.log({ m: 1 }, 1);
    await run.flush();
    assert.equal(errors.length, 1);
    const [e] = errors;
    assert.ok(e instanceof StepstreamError);
    assert.equal(e.code, status.FAILED_PRECONDITION);
    assert.equal(e.codeName, "FAILED_PRECONDITION");
    assert.equal(e.reason, "RUN_NOT_ACTIVE");
    assert.equal(e.domain, "stepstream.dev");
    assert.equal(e.message, "run 'stopped' is STOPPED, not RUNNING; resume it to write");
    assert.deepEqual({ ...e.metadata }, { sequence_used: "true", run_id: "stopped", state: "STOPPED" });
    assert.equal(e.points, 1);
    await run.resume();
    run.log({ m: 1 }, 1);
    await run.flush();
    assert.equal(run.stats.acceptedPoints, 1);
    await run.close();
  });
});

describe("errors", () => {
  test("RPC errors carry code, reason and metadata", async () => {
    await rejectsWith(Run.attach("no-such-run", { address: service.address }), {
      code: status.NOT_FOUND,
      reason: "RUN_NOT_FOUND",
      message: "run 'no-such-run' not found in project 'default'",
      metadata: { project: "default", run_id: "no-such-run" },
    });
    const run = await Run.create({ address: service.address, runId: "twice" });
    await rejectsWith(Run.create({ address: service.address, runId: "twice" }), {
      code: status.ALREADY_EXISTS,
      reason: "RUN_ALREADY_EXISTS",
    });
    await rejectsWith(run.readSeries([], { maxPoints: 2 }), {
      code: status.INVALID_ARGUMENT,
      reason: "INVALID_MAX_POINTS",
      message: "max_points must be at least 5, got 2",
      metadata: { max_points: "2" },
    });
    await rejectsWith(admin.call("createRun", { runId: "-lead" }), {
      code: status.INVALID_ARGUMENT,
      reason: "INVALID_RUN_ID",
      message:
        "run_id '-lead' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
      metadata: { field: "run_id", value: "-lead" },
    });
    await rejectsWith(Run.fork("nope?_step=3", { address: service.address, runId: "orphan" }), {
      code: status.NOT_FOUND,
      reason: "RUN_NOT_FOUND",
    });
    await run.close();
  });

  test("local checks fail before any RPC, with the service's rules", async () => {
    await rejectsWith(Run.create({ address: service.address, runId: "-run" }), {
      code: status.INVALID_ARGUMENT,
      reason: "INVALID_ARGUMENT",
      message:
        'runId "-run" must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit',
    });
    await rejectsWith(Run.create({ address: service.address, forkFrom: "a?step=1" }), {
      code: status.INVALID_ARGUMENT,
      reason: "INVALID_ARGUMENT",
      message: `forkFrom "a?step=1" is not '<run_id>?_step=<N>' (e.g. 'my-run?_step=200'): the key must be _step, got "step"`,
    });
    await rejectsWith(Run.create({ address: service.address, runId: "self", forkFrom: "self?_step=1" }), {
      code: status.INVALID_ARGUMENT,
      reason: "INVALID_ARGUMENT",
      message: "forkFrom names the run itself (self); to rewind it use resumeFrom",
    });
    assert.deepEqual(parseRunMoment("r.1?_step=-2.5", "forkFrom"), { runId: "r.1", step: -2.5 });
    const run = await Run.create({ address: service.address, runId: "local" });
    assert.throws(() => run.log({ "a\0b": 1 }, 1), /series name "a\\u0000b" contains a NUL character/);
    assert.throws(() => run.log({ a: "x" }, 1), /value of "a" must be a number, got string/);
    assert.throws(() => run.log({ a: 1 }, NaN), /step must be a finite number, got NaN/);
    await run.close();
  });
});

describe("fork and rewind", () => {
  test("a fork inherits points up to its step; its floor is the last inherited step", async () => {
    const parent = await Run.create({ address: service.address, runId: "parent", tags: ["t"] });
    for (const step of range(0, 10)) parent.log({ m: step }, step * 2);
    await parent.close();
    const child = await Run.fork("parent?_step=9", { address: service.address, runId: "child" });
    assert.equal(child.lastKnown.incarnations[0].origin, "FORKED");
    assert.equal(child.lastKnown.incarnations[0].forkStep, 9);
    assert.deepEqual(child.lastKnown.tags, ["t"]);
    const rejected = [];
    child.on("rejection", (r) => rejected.push(r));
    child.log({ m: -1 }, 8); // at the parent's last inherited step: rejected
    await child.flush();
    child.log({ m: 100 }, 9); // above it, and still <= fork_step: accepted
    await child.flush();
    assert.deepEqual(rejected.map((r) => [r.reason, r.floor]), [["STEP_NOT_INCREASING", 8]]);
    const m = (await child.readSeries(["m"])).get("m");
    assert.deepEqual([...m.steps], [0, 2, 4, 6, 8, 9]);
    const own = (await child.readSeries(["m"], { ownPointsOnly: true })).get("m");
    assert.deepEqual([...own.steps], [9]);
    await child.close();
    const viaObject = await Run.create({
      address: service.address,
      runId: "child2",
      forkFrom: { runId: "parent", step: 3 },
    });
    assert.deepEqual([...(await viaObject.readSeries(["m"])).get("m").steps], [0, 2]);
    await viaObject.close();
  });

  test("rewind cuts the view, archives the old incarnation and resumes above the cut", async () => {
    const run = await Run.create({ address: service.address, runId: "rewound" });
    for (const step of range(0, 10)) run.log({ m: step }, step);
    await run.flush();
    const first = run.incarnationId;
    const info = await run.rewind(4);
    assert.notEqual(info.currentIncarnationId, first);
    assert.equal(info.incarnations.at(-1).origin, "REWOUND");
    assert.equal(info.incarnations[0].archived, true);
    run.log({ m: 50 }, 5);
    await run.flush();
    assert.equal(run.incarnationId, info.currentIncarnationId);
    assert.deepEqual([...(await run.readSeries(["m"])).get("m").steps], [0, 1, 2, 3, 4, 5]);
    const archived = (await run.readSeries(["m"], { incarnationId: first })).get("m");
    assert.deepEqual([...archived.steps], range(0, 10));
    await run.close();
    // W&B's resume_from string rewinds and attaches.
    const again = await Run.create({ address: service.address, resumeFrom: "rewound?_step=2" });
    assert.equal(again.lastKnown.state, "RUNNING");
    again.log({ m: 3 }, 3);
    await again.flush();
    assert.deepEqual([...(await again.readSeries(["m"])).get("m").steps], [0, 1, 2, 3]);
    await again.close();
    await rejectsWith(Run.rewind("nope?_step=1", { address: service.address }), {
      code: status.NOT_FOUND,
      reason: "RUN_NOT_FOUND",
    });
  });

  test("attach continues a run with a new writer", async () => {
    const first = await Run.create({ address: service.address, runId: "attached" });
    first.log({ m: 1 }, 1);
    await first.close({ finish: false });
    const second = await Run.attach("attached", { address: service.address });
    second.log({ m: 2 }, 2);
    await second.flush();
    assert.deepEqual([...(await second.readSeries(["m"])).get("m").steps], [1, 2]);
    await second.close();
  });
});

describe("exactly once", () => {
  test("across a kill -9 of the service, every point lands once", async () => {
    const run = await Run.create({
      address: service.address,
      runId: "killed",
      writerId: "trainer-0",
      maxBatchPoints: 1_000,
      lingerMs: 5,
    });
    let reconnects = 0;
    run.on("reconnect", () => reconnects++);
    const steps = 20_000;
    let restarted;
    for (const step of range(0, steps)) {
      if (step === 8_000) {
        await service.kill9();
        restarted = new Promise((r) => setTimeout(r, 300)).then(() => service.up());
      }
      const wait = run.log({ a: step, b: -step }, step);
      if (wait) await wait;
      if (step % 1_000 === 0) await new Promise((r) => setImmediate(r));
    }
    await restarted;
    await run.flush();
    assert.ok(reconnects > 0);
    assert.ok(run.stats.connections >= 2);
    const series = await run.readSeries(["a", "b"]);
    assert.deepEqual([...series.get("a").steps], range(0, steps));
    assert.deepEqual([...series.get("a").values], range(0, steps));
    assert.equal(series.get("b").steps.length, steps);
    assert.equal(run.stats.acceptedPoints + run.stats.duplicatePoints, 2 * steps);
    await run.close();
  });

  test("a service that stays away fails the run after reconnectTimeoutMs, with the cause", async () => {
    const run = await Run.create({ address: service.address, runId: "gone", reconnectTimeoutMs: 300 });
    await service.kill9();
    try {
      run.log({ a: 1 }, 1);
      const err = await run.flush().then(
        () => assert.fail("flush should fail"),
        (e) => e,
      );
      assert.ok(err instanceof StepstreamError);
      assert.equal(err.code, status.UNAVAILABLE);
      assert.ok(err.retryable);
      assert.throws(() => run.log({ a: 2 }, 2), (e) => e === err);
      await assert.rejects(run.close(), (e) => e === err);
    } finally {
      await service.up();
    }
  });

  test("a stalled service (SIGSTOP) is left after ackTimeoutMs; nothing is lost or doubled", async () => {
    const run = await Run.create({ address: service.address, runId: "stalled", ackTimeoutMs: 300, lingerMs: 5 });
    const causes = [];
    run.on("reconnect", (_, cause) => causes.push(cause.reason));
    run.log({ a: 0 }, 0);
    await run.flush();
    service.pause();
    try {
      for (const step of range(1, 200)) run.log({ a: step }, step);
      while (!causes.includes("ACK_TIMEOUT")) await new Promise((r) => setTimeout(r, 50));
    } finally {
      service.resume();
    }
    await run.flush();
    const a = (await run.readSeries(["a"])).get("a");
    assert.deepEqual([...a.steps], range(0, 200));
    await run.close();
  });
});
