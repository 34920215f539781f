"""A run created directly on a store (no service): what the store-level tests start from."""

from __future__ import annotations

from stepstream_server.model import RunRecord
from stepstream_server.store.base import Store


def create_plain_run(
    store: Store, *, project: str = "p", run_id: str = "r", incarnation_id: str = "p-r-1"
) -> RunRecord:
    """A RUNNING run with no tags, config or parent, created at time 1.0."""
    return store.create_run(
        project=project,
        run_id=run_id,
        experiment="",
        tags=[],
        description="",
        config={},
        values={},
        incarnation_id=incarnation_id,
        parent=None,
        fork_step=None,
        now=1.0,
    )
