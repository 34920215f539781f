"""A trainer child process for the spool tests: python spool_trainer.py ADDRESS RUN_ID MODE STEPS.

Logs a 10-key dict per step (value of key i at step s: s * 0.5 + i) to a Run in MODE ("offline":
Run(mode="offline"); "online": Run(address=ADDRESS)); every 500 steps it calls wait(), after
which everything logged is durable in the spool (offline) or acknowledged (online), and prints
"durable <last step>". After STEPS steps it prints "done" and waits for stdin to close (the
tests kill it with SIGKILL before or after that).
"""

from __future__ import annotations

import sys

import stepstream

KEYS = [f"layer{i}/grad" for i in range(10)]


def main() -> None:
    address, run_id, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "offline":
        run = stepstream.Run(run_id, address=address, mode="offline")
    else:
        run = stepstream.Run(run_id, address=address, connect_timeout=1.0, reconnect_timeout=1.0)
    for step in range(steps):
        run.log_metrics({key: step * 0.5 + i for i, key in enumerate(KEYS)}, step=step)
        if step % 500 == 499:
            run.wait(verbose=False)
            print(f"durable {step}", flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
