"""A writer process speaking the wire protocol: python writer_proc.py ADDRESS RUN WRITER MODE N.

MODE "explicit": sends steps 0..N-1 of series "shared", one per batch, value = WRITER's number.
MODE "assign": appends N points to "shared" with server-assigned steps, one per batch.
Prints "accepted <count>" when done.
"""

from __future__ import annotations

import queue
import sys

import grpc
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc


def main() -> None:
    address, run_id, writer_id, mode, n = (
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        sys.argv[4],
        int(sys.argv[5]),
    )
    tag = float(writer_id.rsplit("-", 1)[-1])
    requests: queue.Queue[ingest_pb2.AppendPointsRequest | None] = queue.Queue()

    def feed():  # type: ignore[no-untyped-def]
        while (item := requests.get()) is not None:
            yield item

    with grpc.insecure_channel(address) as ch:
        responses = ingest_pb2_grpc.IngestServiceStub(ch).AppendPoints(feed())
        requests.put(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(run_id=run_id, writer_id=writer_id)
            )
        )
        next(responses)
        accepted = 0
        for i in range(n):
            if mode == "explicit":
                series = ingest_pb2.FloatSeries(name="shared", steps=[float(i)], values=[tag])
            else:
                series = ingest_pb2.FloatSeries(name="shared", values=[tag], assign_steps=True)
            requests.put(
                ingest_pb2.AppendPointsRequest(
                    batch=ingest_pb2.PointBatch(sequence=i + 1, float_series=[series])
                )
            )
            resp = next(responses)
            accepted += resp.appended.accepted_count
        requests.put(None)
        for _ in responses:
            pass
    print(f"accepted {accepted}")


if __name__ == "__main__":
    main()
