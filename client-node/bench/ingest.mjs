// Shape (b) through the TypeScript client: `node bench/ingest.mjs ADDRESS RUN_ID SERIES STEPS`
// logs a SERIES-key object per step (the Python driver's dict), flushes (everything durable)
// and prints one JSON line: points logged and acknowledged, seconds from the first log() call
// to the end of flush().
import { Run } from "../dist/index.js";

const [address, runId, series, steps] = process.argv.slice(2);
const row = {};
for (let k = 0; k < Number(series); k++) row[`m${String(k).padStart(4, "0")}`] = 0.5 + k;
const run = await Run.create({ address, runId });
const t0 = performance.now();
for (let step = 0; step < Number(steps); step++) {
  const wait = run.log(row, step);
  if (wait) await wait;
}
await run.flush();
const seconds = (performance.now() - t0) / 1000;
await run.close();
const points = Number(series) * Number(steps);
const acked = run.stats.acceptedPoints + run.stats.duplicatePoints;
console.log(JSON.stringify({ points, acked, seconds, rate: acked / seconds }));
