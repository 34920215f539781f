// Every ```js block of the repository's README runs, as pasted, against a real service.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { Service } from "./harness.mjs";

const PACKAGE = resolve(import.meta.dirname, "..");
const README = readFileSync(join(PACKAGE, "..", "README.md"), "utf8");
const BLOCKS = [...README.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);

let service;
before(async () => (service = await Service.start()));
after(async () => service?.stop());

test("the README has a Node quick start", () => assert.ok(BLOCKS.length >= 1));

test("the README's js blocks run in order", async () => {
  // Inside the package, so that "@stepstream/client" resolves to it (a self-reference).
  const dir = join(PACKAGE, "dist-test");
  mkdirSync(dir, { recursive: true });
  for (const [i, block] of BLOCKS.entries()) {
    const file = join(dir, `readme-${i}.mjs`);
    writeFileSync(file, block);
    const { stdout } = await promisify(execFile)("node", [file], {
      env: { ...process.env, STEPSTREAM_ADDRESS: service.address },
      timeout: 60_000,
    }).catch((e) => assert.fail(`README js block ${i} failed:\n${block}\n${e.stderr}`));
    for (const [, line] of block.matchAll(/^\/\/ (\[.*\])$/gm)) {
      assert.ok(stdout.includes(line), `block ${i}: ${line} not in ${stdout}`);
    }
  }
});
