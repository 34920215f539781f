"""A trainer's writer in miniature, for fault tests across replicas:

    python replica_writer.py ADDRESSES RUN WRITER BATCHES PAUSE

ADDRESSES is a comma-separated list of replicas. The writer keeps every unacknowledged batch
and, when a stream fails or stops answering (a replica killed or stopped), moves to the next
replica and re-sends them with their original sequence numbers. Each batch k carries:
  own/<WRITER>   5 explicit steps 5k..5k+4 (only this writer logs them: never to be rejected)
  race           step k (every writer logs it: at most one point per step may land)
  shared         1 point with a server-assigned step, value WRITER * 1e6 + k
PAUSE seconds pass between windows of batches (a trainer's compute). Prints one JSON line: every acknowledgement by sequence, and how often it moved.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc

ACK_TIMEOUT = 3.0  # a replica that answers nothing for this long is taken as stalled
WINDOW = 8


def batch(writer: int, k: int) -> ingest_pb2.PointBatch:
    steps = [float(5 * k + j) for j in range(5)]
    return ingest_pb2.PointBatch(
        sequence=k + 1,
        float_series=[
            ingest_pb2.FloatSeries(name=f"own/{writer}", steps=steps, values=steps),
            ingest_pb2.FloatSeries(name="race", steps=[float(k)], values=[float(writer)]),
            ingest_pb2.FloatSeries(name="shared", values=[writer * 1e6 + k], assign_steps=True),
        ],
    )


async def main() -> None:
    addresses = sys.argv[1].split(",")
    run_id, writer_id, n, pause = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    writer = int(writer_id.rsplit("-", 1)[-1])
    todo = [batch(writer, k) for k in range(n)]
    unacked: dict[int, ingest_pb2.PointBatch] = {}
    acks: dict[int, dict[str, object]] = {}
    moves = 0

    def ack(resp: ingest_pb2.AppendPointsResponse) -> None:
        if not resp.HasField("appended"):
            raise RuntimeError(f"batch {resp.sequence} refused: {resp}")
        a = resp.appended
        unacked.pop(resp.sequence, None)
        acks[resp.sequence] = {
            "incarnation": a.incarnation_id,
            "accepted": a.accepted_count,
            "duplicates": a.duplicate_count,
            "duplicate_batch": a.duplicate_batch,
            "rejected": {r.series: r.count for r in a.rejections},
            "assigned": {s.series: s.first_step for s in a.assigned_steps},
        }

    for attempt in range(2000):
        address = addresses[attempt % len(addresses)]
        try:
            async with grpc.aio.insecure_channel(address) as ch:
                call = ingest_pb2_grpc.IngestServiceStub(ch).AppendPoints()

                async def read(call: Any = call) -> ingest_pb2.AppendPointsResponse:
                    resp = await asyncio.wait_for(call.read(), ACK_TIMEOUT)
                    if resp is grpc.aio.EOF:
                        raise ConnectionError("stream ended")
                    return resp  # type: ignore[no-any-return]

                await call.write(
                    ingest_pb2.AppendPointsRequest(
                        open=ingest_pb2.OpenStream(run_id=run_id, writer_id=writer_id)
                    )
                )
                await read()
                resend = [unacked[s] for s in sorted(unacked)]
                for b in resend:
                    await call.write(ingest_pb2.AppendPointsRequest(batch=b))
                for _ in resend:
                    ack(await read())
                while todo:
                    window = todo[:WINDOW]
                    for b in window:
                        unacked[b.sequence] = b
                        await call.write(ingest_pb2.AppendPointsRequest(batch=b))
                    del todo[: len(window)]
                    for _ in window:
                        ack(await read())
                    await asyncio.sleep(pause)
                await call.done_writing()
                print(json.dumps({"acks": acks, "moves": moves}))
                return
        # A write after the replica ended the stream (killed, draining) finds the RPC
        # finished: InvalidStateError, not AioRpcError.
        except (
            grpc.aio.AioRpcError,
            asyncio.TimeoutError,
            asyncio.InvalidStateError,
            ConnectionError,
        ):
            moves += 1
            await asyncio.sleep(0.05)
    raise SystemExit("writer never finished")


if __name__ == "__main__":
    asyncio.run(main())
