"""Operations: what the sender runs in order with the batches around it (config and tag
updates, state changes, wait() and stop markers), each a unary RunService call or a barrier.

`OperationRunner` is a mixin of `Sender`: the producer calls `_run_operation` once every
earlier batch is answered; a unary call is retried while UNAVAILABLE (the replica it went to
died), for up to `reconnect_timeout`, and an unreachable service sends it to the spool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from ._columnar import EncodedBatch
from ._convert import ingest_error_from_rpc_error
from ._exceptions import RPCError, RunClosedError, StepstreamError
from ._stream import BACKOFF_MAX, BACKOFF_MIN, backoff_delay
from ._types import IngestError

if TYPE_CHECKING:  # the generated stubs declare the asyncio stub type for checkers only
    from stepstream.v1.runs_pb2_grpc import RunServiceAsyncStub

# Deadline of one attempt of a unary call made from the sender (config, tags, state).
UNARY_TIMEOUT = 60.0
# A call failing with one of these found no service: the run may go offline (to the spool).
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

UnaryCall = Callable[["RunServiceAsyncStub"], Awaitable[Any]]


@dataclass(eq=False)
class Operation:
    """Something the producer runs in order with the batches around it.

    `call` is a unary RPC (None for a pure barrier such as wait()). The result or the error
    goes to `future`; when `report` is set, an error also goes to on_error (for operations
    nobody waits on, such as log_configs).
    """

    name: str
    call: UnaryCall | None = None
    report: bool = False
    stop: bool = False
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class OperationRunner:
    """Mixin of `Sender`: runs the operations the producer takes from the queue."""

    # Provided by Sender.
    fatal: StepstreamError | None
    offline: bool
    _unacked: OrderedDict[int, EncodedBatch]
    _current_op: Operation | None
    _reconnect_timeout: float
    _runs: Any

    if TYPE_CHECKING:  # Sender's own methods (and its other mixins')

        async def _wait_until(self, condition: Callable[[], bool]) -> None: ...
        async def _offline_operation(self, op: Any) -> bool: ...
        async def _end_stream(self) -> None: ...
        def _go_offline(self, error: RPCError) -> bool: ...
        def _report(self, error: IngestError) -> None: ...
        def _next_entry(self) -> None: ...

    async def _run_operation(self, op: Operation) -> None:
        self._current_op = op
        await self._wait_until(lambda: not self._unacked or self.offline)
        if self.offline and await self._offline_operation(op):
            self._current_op = None
            return
        if op.stop:
            await self._end_stream()
            op.future.set_result(None)
        elif op.call is None:
            op.future.set_result(None)
        else:
            try:
                result = await self._unary(op.call)
            except RPCError as exc:
                if (
                    exc.code in UNREACHABLE
                    and self._go_offline(exc)
                    and await self._offline_operation(op)
                ):
                    self._current_op = None
                    return
                if op.report:
                    self._report(ingest_error_from_rpc_error(exc, operation=op.name))
                op.future.set_exception(exc)
            else:
                op.future.set_result(result)
        self._current_op = None

    async def _unary(self, call: UnaryCall) -> Any:
        """Run a unary call, retrying UNAVAILABLE with backoff for up to reconnect_timeout."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._reconnect_timeout
        backoff = BACKOFF_MIN
        while True:
            if self.offline:
                raise RPCError(grpc.StatusCode.UNAVAILABLE, "the run is offline")
            try:
                return await call(self._runs)
            except grpc.RpcError as exc:
                error = RPCError.from_grpc(exc)
                if error.code != grpc.StatusCode.UNAVAILABLE or loop.time() >= give_up:
                    raise error from None
            self._next_entry()
            await asyncio.sleep(backoff_delay(backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _fail_current_op(self) -> None:
        op = self._current_op
        if op is not None and not op.future.done():
            op.future.set_exception(self.fatal or RunClosedError("the run is closed"))
