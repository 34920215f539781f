"""A small family of runs for the web view's tests: a baseline rewound at 120, forks of it at
80 and 150 and a finished run of another experiment, with grouped series, NaN and infinities, a text
series and hostile names (markup, quotes, an RTL override) wherever a user names something."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from google.protobuf import struct_pb2
from stepstream.v1 import runs_pb2
from wire import Stream, create_run, fseries, sseries

EXPERIMENT = 'sweep "<i>1</i>"'
HOSTILE = "<script>alert('x')</script>\u202e\"q\""
RTL_TAG = "\u202egnp.exe"


@dataclasses.dataclass
class Family:
    base_a: str  # base's first incarnation (archived by the rewind)
    base_b: str  # base after the rewind at 120
    child: str  # the fork of base at 80
    sibling: str  # the fork of base at 150


def loss(i: int) -> float:
    return {10: math.nan, 20: math.inf, 30: -math.inf}.get(i, 2.0 / (1 + i / 20) + 0.05 * (i % 7))


async def write(ingest: Any, run_id: str, writer: str, *series: Any) -> None:
    s = Stream(ingest)
    await s.open(run_id, writer_id=writer)
    r = await s.send(*series)
    assert r.HasField("appended"), r
    await s.close()


def train(steps: range, scale: float = 1.0) -> list[Any]:
    xs = list(steps)
    return [
        fseries("train/loss", xs, [loss(i) * scale for i in xs]),
        fseries("train/acc", xs, [min(1.0, i / 200) for i in xs]),
        fseries("grad/layer10", xs, [0.1 + i / 1000 for i in xs]),
        fseries("grad/layer2", xs, [0.2 + i / 1000 for i in xs]),
        fseries("eval/loss", xs[::10], [loss(i) * 1.1 * scale for i in xs[::10]]),
    ]


def config(**entries: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(entries)
    return out


async def family(runs: Any, ingest: Any) -> Family:
    await create_run(
        runs,
        "base",
        experiment=EXPERIMENT,
        tags=["baseline", RTL_TAG],
        description=HOSTILE,
        config=config(lr=0.1, batch=32, **{HOSTILE: 1}),
    )
    await write(
        ingest,
        "base",
        "w1",
        *train(range(200)),
        fseries(HOSTILE, range(5), range(5)),
        sseries("stdout", [0, 1], ["hello <b>", "world"]),
    )
    a = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="base"))).run.current_incarnation_id
    rewound = await runs.RewindRun(runs_pb2.RewindRunRequest(run_id="base", step=120))
    await write(ingest, "base", "w2", *train(range(121, 180), 0.8))
    child = await create_run(
        runs,
        "child",
        experiment=EXPERIMENT,
        tags=["fork"],
        config=config(lr=0.01, batch=64),
        fork_run_id="base",
        fork_step=80,
    )
    await write(ingest, "child", "w3", *train(range(81, 160), 0.6))
    sibling = await create_run(
        runs,
        "sibling",
        experiment=EXPERIMENT,
        tags=["branch"],
        config=config(lr=0.05, batch=64),
        fork_run_id="base",
        fork_step=150,
    )
    await write(ingest, "sibling", "w5", *train(range(151, 175), 0.7))
    await create_run(runs, "other", experiment="solo", tags=["baseline"], config=config(lr=0.5))
    await write(ingest, "other", "w4", *train(range(50), 1.3))
    await runs.FinishRun(runs_pb2.FinishRunRequest(run_id="other"))
    return Family(
        a,
        rewound.run.current_incarnation_id,
        child.current_incarnation_id,
        sibling.current_incarnation_id,
    )
