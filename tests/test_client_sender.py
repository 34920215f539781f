"""The background sender without a service: giving up, aborting, and how it reads answers.

Reconnect and re-send against a live service (kill -9, duplicates, exactly-once) belong in the
integration tests that run the real service; these only cover what needs no service at all.
"""

from __future__ import annotations

import io
import socket
import time

import grpc
import pytest
import stepstream
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from stepstream._columnar import EncodedBatch
from stepstream._operations import Operation
from stepstream._progress import Progress
from stepstream._records import Rows, pack_doubles
from stepstream._sender import Sender
from stepstream._stream import BACKOFF_MAX, BACKOFF_MIN, backoff_delay
from stepstream._types import SenderStats
from stepstream.v1 import ingest_pb2


def _status(code: grpc.StatusCode, message: str, reason: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="stepstream"))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _sender(errors: list[stepstream.IngestError], **overrides: float) -> Sender:
    settings: dict[str, float] = {"connect_timeout": 0.5, "reconnect_timeout": 0.5}
    settings.update(overrides)
    return Sender(
        address=_unused_address(),
        project="",
        run_id="r",
        writer_id="w",
        report=errors.append,
        max_queued_points=1000,
        max_batch_points=100,
        max_inflight_batches=4,
        **settings,
    )


def _row(step: float) -> Rows:
    return Rows(step, time.time(), ("loss",), pack_doubles([0.5]))


def test_backoff_jitter_stays_within_the_step() -> None:
    for backoff in (BACKOFF_MIN, 0.4, BACKOFF_MAX):
        delays = [backoff_delay(backoff) for _ in range(200)]
        assert all(backoff / 2 <= d <= backoff for d in delays)


def test_gives_up_after_reconnect_timeout_and_reports_it() -> None:
    errors: list[stepstream.IngestError] = []
    sender = _sender(errors)
    sender.start()
    sender.put(_row(1))
    sender.put(_row(2))
    waited = sender.submit(Operation("wait"))
    started = time.monotonic()
    with pytest.raises(stepstream.RPCError) as caught:
        waited.result(timeout=20)
    assert time.monotonic() - started < 10
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert "gave up reconnecting after 0.5 s" in caught.value.message
    (error,) = errors
    assert (error.series, error.reason, error.count) == ("", "UNAVAILABLE", 2)
    with pytest.raises(stepstream.RunClosedError, match="sender stopped after an error"):
        sender.put(_row(3))
    assert sender.join(5)
    stats = sender.stats()
    assert (stats.logged_points, stats.acknowledged_points, stats.pending_points) == (2, 0, 2)


def test_abort_stops_the_thread_while_it_reconnects() -> None:
    errors: list[stepstream.IngestError] = []
    sender = _sender(errors, reconnect_timeout=300)
    sender.start()
    sender.put(_row(1))
    pending = sender.submit(Operation("wait"))
    time.sleep(0.3)
    started = time.monotonic()
    sender.abort()
    assert time.monotonic() - started < 5
    assert not sender.alive
    with pytest.raises(stepstream.RunClosedError):
        pending.result(timeout=1)
    with pytest.raises(stepstream.RunClosedError, match="the run is closed"):
        sender.put(_row(2))
    assert errors == []


def _batch(sequence: int, points: int) -> EncodedBatch:
    return EncodedBatch(sequence=sequence, request=b"", points=points)


def test_answers_update_counters_and_report_rejections() -> None:
    errors: list[stepstream.IngestError] = []
    sender = _sender(errors)
    for sequence, points in ((5, 10), (6, 4), (7, 3)):
        sender._unacked[sequence] = _batch(sequence, points)
    appended = ingest_pb2.AppendResult(accepted_count=7, duplicate_count=1, incarnation_id="inc")
    appended.rejections.add(series="a", reason="STEP_NOT_INCREASING", count=2, floor=9)
    sender._on_answer(ingest_pb2.AppendPointsResponse(sequence=5, appended=appended))
    duplicate = ingest_pb2.AppendResult(accepted_count=4, duplicate_batch=True)
    sender._on_answer(ingest_pb2.AppendPointsResponse(sequence=6, appended=duplicate))
    failed = _status(grpc.StatusCode.FAILED_PRECONDITION, "run is stopped", "RUN_NOT_ACTIVE")
    sender._on_answer(ingest_pb2.AppendPointsResponse(sequence=7, error=failed))
    stats = sender.stats()
    assert (stats.acknowledged_points, stats.rejected_points, stats.duplicate_batches) == (
        12,
        5,
        1,
    )
    assert sender.answered_points == 17 and not sender._unacked
    assert sender.incarnation_id == "inc"
    assert [(e.series, e.reason, e.count, e.sequence) for e in errors] == [
        ("a", "STEP_NOT_INCREASING", 2, 5),
        ("", "RUN_NOT_ACTIVE", 3, 7),
    ]


def test_an_undecodable_request_answer_pops_the_oldest_batch() -> None:
    errors: list[stepstream.IngestError] = []
    sender = _sender(errors)
    sender._unacked[3] = _batch(3, 2)
    sender._unacked[4] = _batch(4, 2)
    bad = _status(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode", "MALFORMED_REQUEST")
    sender._on_answer(ingest_pb2.AppendPointsResponse(sequence=0, error=bad))
    assert list(sender._unacked) == [4]
    assert errors[0].reason == "MALFORMED_REQUEST" and errors[0].sequence == 3


def test_reopening_detects_a_writer_id_conflict_and_lost_commits() -> None:
    sender = _sender([])
    sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=41))
    assert sender._next_sequence == 42
    sender._next_sequence = 45
    sender._last_answered = 43
    sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=43))  # fine
    with pytest.raises(stepstream.RPCError) as conflict:
        sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=45))
    assert conflict.value.reason == "WRITER_ID_CONFLICT"
    with pytest.raises(stepstream.RPCError) as regression:
        sender._on_opened(ingest_pb2.OpenStreamResult(last_committed_sequence=42))
    assert regression.value.reason == "SEQUENCE_REGRESSION"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _stats(logged: int, pending: int, connected: bool = True) -> SenderStats:
    return SenderStats(
        logged_points=logged,
        acknowledged_points=logged - pending,
        rejected_points=0,
        pending_points=pending,
        batches_sent=1,
        batches_resent=0,
        duplicate_batches=0,
        inflight_batches=1,
        connections=1,
        connected=connected,
    )


def test_progress_updates_one_line_on_a_terminal() -> None:
    stream = _Stream(tty=True)
    progress = Progress(stream)
    progress.show(_stats(2_000_000, 1_500_000))
    progress.show(_stats(2_000_000, 10, connected=False))
    progress.end()
    assert stream.getvalue() == (
        "\rstepstream: 500,000 of 2,000,000 points acknowledged"
        "\rstepstream: 1,999,990 of 2,000,000 points acknowledged (reconnecting)\n"
    )


def test_progress_writes_occasional_lines_elsewhere() -> None:
    stream = _Stream(tty=False)
    progress = Progress(stream)
    progress.show(_stats(10, 5))
    progress.show(_stats(10, 4))  # within five seconds of the last line: skipped
    progress.end()
    assert stream.getvalue() == "stepstream: 5 of 10 points acknowledged\n"
