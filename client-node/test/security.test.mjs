// The TypeScript client against a service with TLS and --auth required: the token and the CA
// reach every call (unary, server streaming and the ingest stream); without them it is refused.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { Run, RunClient, StepstreamError } from "../dist/index.js";
import { Service } from "./harness.mjs";

let service;
before(async () => {
  service = await Service.start({ tls: true, auth: true });
});
after(async () => {
  await service?.stop();
});

describe("TLS and tokens", () => {
  test("a Run with the CA and the token logs and reads back", async () => {
    const run = await Run.create({
      address: service.address,
      runId: "secured-1",
      rootCertificates: service.ca,
      token: service.token,
    });
    for (let step = 0; step < 100; step++) run.log({ loss: step }, step);
    await run.flush();
    assert.equal(run.stats.acceptedPoints, 100);
    const series = await run.readSeries(["loss"]);
    assert.equal(series.get("loss").steps.length, 100);
    await run.close();
  });

  test("without a token: UNAUTHENTICATED TOKEN_MISSING", async () => {
    const client = new RunClient(service.address, { rootCertificates: service.ca, token: "" });
    try {
      const err = await client.call("listRuns", {}).then(
        () => assert.fail("expected an error"),
        (e) => e,
      );
      assert.ok(err instanceof StepstreamError);
      assert.equal(err.code, status.UNAUTHENTICATED);
      assert.equal(err.reason, "TOKEN_MISSING");
    } finally {
      client.close();
    }
  });

  test("without the CA the handshake fails: UNAVAILABLE", async () => {
    const client = new RunClient(service.address, { tls: true, token: service.token, timeoutMs: 3_000 });
    try {
      const err = await client.call("listRuns", {}).then(
        () => assert.fail("expected an error"),
        (e) => e,
      );
      assert.equal(err.code, status.UNAVAILABLE);
    } finally {
      client.close();
    }
  });

  test("the environment supplies the CA and the token", async () => {
    process.env.STEPSTREAM_TLS_CA = service.ca;
    process.env.STEPSTREAM_TOKEN = service.token;
    try {
      const client = new RunClient(service.address);
      try {
        const runs = await client.call("listRuns", {});
        assert.ok(runs.runs.some((r) => r.runId === "secured-1"));
      } finally {
        client.close();
      }
    } finally {
      delete process.env.STEPSTREAM_TLS_CA;
      delete process.env.STEPSTREAM_TOKEN;
    }
  });
});
