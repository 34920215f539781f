"""A training loop in its own process, through the real client: python trainer_proc.py ADDRESS
RUN RELEASE MIN_STEPS. Logs NAMES at steps 0, 1, 2, ... (value = step * 0.25 + series index), a
little spread out. Once its first 100 steps are acknowledged (the stream is up) it prints
"started"; it goes on until the file RELEASE exists and MIN_STEPS are logged, so it is still
streaming whatever the test does meanwhile. At the end it prints one JSON line: the steps
logged and the sender's counters and errors."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import stepstream

NAMES = [f"layer{i}/norm" for i in range(10)]
MAX_STEPS = 1_000_000  # a bound, never reached by the tests


def main() -> None:
    address, run_id, release, min_steps = (
        sys.argv[1],
        sys.argv[2],
        Path(sys.argv[3]),
        int(sys.argv[4]),
    )
    run = stepstream.Run(run_id, address=address, max_batch_points=500)
    step = 0
    while step < MAX_STEPS:
        run.log_metrics({name: step * 0.25 + i for i, name in enumerate(NAMES)}, step=step)
        step += 1
        if step == 100:
            run.wait(timeout=120, verbose=False)
            print("started", flush=True)
        if step % 20 == 0:
            time.sleep(0.01)  # a training loop has other work: the stream stays busy
            if step >= min_steps and release.exists():
                break
    run.wait(timeout=120, verbose=False)
    stats = run.stats
    result = {
        "steps": step,
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
