"""A training loop in its own process, through the real client: python trainer_proc.py ADDRESS
RUN STEPS. Logs NAMES at every step 0..STEPS-1 (value = step * 0.25 + series index), a little
spread out; prints "started" once 100 steps are logged and, at the end, one JSON line of the
sender's counters and errors."""

from __future__ import annotations

import json
import sys
import time

import stepstream

NAMES = [f"layer{i}/norm" for i in range(10)]


def main() -> None:
    address, run_id, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = stepstream.Run(run_id, address=address, max_batch_points=500)
    for step in range(steps):
        run.log_metrics({name: step * 0.25 + i for i, name in enumerate(NAMES)}, step=step)
        if step == 100:
            print("started", flush=True)
        if step % 20 == 0:
            time.sleep(0.01)  # a training loop has other work: the stream stays busy
    run.wait(timeout=120, verbose=False)
    stats = run.stats
    result = {
        "acknowledged": stats.acknowledged_points,
        "rejected": stats.rejected_points,
        "connections": stats.connections,
        "resent": stats.batches_resent,
        "duplicates": stats.duplicate_batches,
        "errors": [str(e) for e in run.errors],
    }
    run.close(timeout=60)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
