"""The client's reconnect backoff ends only on progress (docs/faults.md): a service that opens
the stream and then fails it again (its store refusing writes) is not hit twenty times a
second by every client."""

from __future__ import annotations

import socket

from stepstream._columnar import EncodedBatch
from stepstream._sender import Sender
from stepstream._stream import BACKOFF_MAX, BACKOFF_MIN
from stepstream.v1 import ingest_pb2


def _sender() -> Sender:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    return Sender(
        address=address,
        project="",
        run_id="r",
        writer_id="w",
        report=lambda error: None,
        max_queued_points=1000,
        max_batch_points=100,
        max_inflight_batches=4,
        connect_timeout=0.5,
        reconnect_timeout=300.0,
    )


def _failing(sender: Sender) -> None:
    sender._backoff = BACKOFF_MAX
    sender._failing_since = 1.0
    sender._next_sequence = 2


def test_open_with_batches_to_resend_keeps_the_backoff() -> None:
    sender = _sender()
    _failing(sender)
    sender._unacked[1] = EncodedBatch(sequence=1, request=b"", points=3)
    sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=0))
    assert sender._backoff == BACKOFF_MAX  # opening proves nothing: the re-send may fail again
    assert sender._failing_since == 1.0  # and the give-up clock keeps running

    sender._on_answer(
        ingest_pb2.AppendPointsResponse(
            sequence=1, appended=ingest_pb2.AppendResult(accepted_count=3)
        )
    )
    assert sender._backoff == BACKOFF_MIN  # an acknowledged batch is progress
    assert sender._failing_since is None


def test_open_with_nothing_to_resend_is_progress() -> None:
    sender = _sender()
    _failing(sender)
    sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=1))
    assert sender._backoff == BACKOFF_MIN
    assert sender._failing_since is None
