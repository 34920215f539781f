"""Run management: create (and fork), state changes, config and tags.

Mutations that change what ingest sees (state, current incarnation) raise the run's fence in
the store transaction that makes them, so a batch judged before them either landed first or is
refused and judged again after them, on whichever replica (docs/replicas.md).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepstream.rules import DESCRIPTION_KEY

from . import errors
from .ingest import IngestWorker
from .model import Incarnation, Origin, RunRecord, RunState
from .store import AsyncStore
from .validation import (
    check_name,
    check_tags,
    check_text,
    experiment_of,
    project_of,
    run_id_of,
)


def new_incarnation_id() -> str:
    return "inc-" + secrets.token_hex(10)


def new_run_id() -> str:
    return "run-" + secrets.token_hex(6)


@dataclass(frozen=True)
class CreateRun:
    """A validated CreateRun request."""

    project: str
    experiment: str
    run_id: str
    tags: tuple[str, ...]
    description: str
    config: dict[str, Any]
    fork_run_id: str
    fork_incarnation_id: str
    fork_step: float | None
    inherit_configs: bool
    get_if_exists: bool


class RunManager:
    """Plain logic behind RunService; the servicer only converts."""

    def __init__(self, store: AsyncStore, worker: IngestWorker) -> None:
        self.store = store
        self.worker = worker

    async def create(self, req: CreateRun) -> tuple[RunRecord, bool, bool]:
        """Create a run; returns (run, parent_fallback, existed)."""
        project = project_of(req.project)
        experiment = experiment_of(req.experiment)
        run_id = run_id_of(req.run_id) if req.run_id else new_run_id()
        check_tags(req.tags)
        config = dict(req.config)
        description = check_text("description", req.description)
        if isinstance(config.get(DESCRIPTION_KEY), str):
            description = config.pop(DESCRIPTION_KEY)
        for key in config:
            check_name("config key", key)
        if req.fork_run_id and req.fork_incarnation_id:
            raise errors.invalid(
                "CONFLICTING_FORK_PARENT",
                "give fork_run_id or fork_incarnation_id, not both",
                fork_run_id=req.fork_run_id,
                fork_incarnation_id=req.fork_incarnation_id,
            )
        forking = bool(req.fork_run_id or req.fork_incarnation_id)
        if forking and req.fork_step is None:
            raise errors.invalid("FORK_STEP_REQUIRED", "a fork needs fork_step", field="fork_step")
        if not forking and req.fork_step is not None:
            raise errors.invalid(
                "FORK_PARENT_REQUIRED",
                "fork_step was given without fork_run_id or fork_incarnation_id",
                field="fork_step",
            )
        if req.fork_step is not None and not math.isfinite(req.fork_step):
            raise errors.invalid(
                "INVALID_FORK_STEP",
                f"fork_step must be finite, got {req.fork_step!r}",
                fork_step=req.fork_step,
            )

        if req.get_if_exists:
            existing = await self.store.read(lambda s: s.get_run(project, run_id))
            if existing is not None:
                return existing, False, True
        parent, fallback = await self._fork_parent(project, experiment, req)
        tags = set(req.tags)
        values: dict[str, Any] = {}
        if parent is not None:
            parent_run = await self.store.read(lambda s: s.get_run(parent.project, parent.run_id))
            assert parent_run is not None
            tags |= set(parent_run.tags)
            description = description or parent_run.description
            if req.inherit_configs:
                config = {**parent_run.config, **config}
                values = dict(parent_run.values)
        record = await self.store.write(
            lambda s: s.create_run(
                project=project,
                run_id=run_id,
                experiment=experiment,
                tags=sorted(tags),
                description=description,
                config=config,
                values=values,
                incarnation_id=new_incarnation_id(),
                parent=parent,
                fork_step=req.fork_step if parent is not None else None,
                now=time.time(),
            )
        )
        # Its first epoch is its fence: the first write needs no store round trip to begin.
        await self.worker.judge.run_changed(record)
        return record, fallback, False

    async def _fork_parent(
        self, project: str, experiment: str, req: CreateRun
    ) -> tuple[Incarnation | None, bool]:
        if req.fork_incarnation_id:
            inc = await self.store.read(lambda s: s.get_incarnation(req.fork_incarnation_id))
            if inc is None:
                raise errors.incarnation_not_found(req.fork_incarnation_id)
            return inc, False
        if not req.fork_run_id:
            return None, False
        parent_run = await self.store.read(lambda s: s.get_run(project, req.fork_run_id))
        fallback = False
        if parent_run is None and experiment:
            parent_run = await self.store.read(lambda s: s.experiment_head(project, experiment))
            fallback = parent_run is not None
        if parent_run is None:
            raise errors.not_found(
                "RUN_NOT_FOUND",
                f"fork parent run {req.fork_run_id!r} not found in project {project!r}"
                + (f" and experiment {experiment!r} has no head run" if experiment else ""),
                project=project,
                run_id=req.fork_run_id,
            )
        current = parent_run.current_incarnation_id
        inc = await self.store.read(lambda s: s.get_incarnation(current))
        assert inc is not None
        return inc, fallback

    async def get(self, project: str, run_id: str) -> RunRecord:
        project, run_id = project_of(project), run_id_of(run_id)
        record = await self.store.read(lambda s: s.get_run(project, run_id))
        if record is None:
            raise errors.run_not_found(project, run_id)
        return record

    async def incarnation(self, incarnation_id: str) -> Incarnation | None:
        return await self.store.read(lambda s: s.get_incarnation(incarnation_id))

    async def projects(self) -> list[str]:
        return await self.store.read(lambda s: s.list_projects())

    async def list(self, project: str, experiment: str) -> list[RunRecord]:
        project, experiment = project_of(project), experiment_of(experiment)
        return await self.store.read(lambda s: s.list_runs(project, experiment))

    async def set_state(
        self, project: str, run_id: str, state: RunState, failure_reason: str = ""
    ) -> RunRecord:
        await self.get(project, run_id)
        record = await self._update(
            project,
            run_id,
            state=state,
            failure_reason=check_text("reason", failure_reason) if state is RunState.FAILED else "",
        )
        await self.worker.judge.run_changed(record)
        return record

    async def rewind(
        self, project: str, run_id: str, step: float, config: dict[str, Any]
    ) -> RunRecord:
        """Cut the run back to `step` (SPEC §4): a new current incarnation whose parent is the
        old one at `step`; the old one is archived; config preserved and merged."""
        if not math.isfinite(step):
            raise errors.invalid(
                "INVALID_REWIND_STEP", f"rewind step must be finite, got {step!r}", step=step
            )
        config = dict(config)
        description = config.pop(DESCRIPTION_KEY, None)
        if description is not None and not isinstance(description, str):
            raise errors.invalid(
                "INVALID_DESCRIPTION",
                f"{DESCRIPTION_KEY} must be a string, got {type(description).__name__}",
                field=DESCRIPTION_KEY,
            )
        for key in config:
            check_name("config key", key)
        current = await self.get(project, run_id)
        record = await self.store.write(
            lambda s: s.add_incarnation(
                project=current.project,
                run_id=current.run_id,
                incarnation_id=new_incarnation_id(),
                config=config,
                fork_step=step,
                origin=Origin.REWOUND,
                now=time.time(),
            )
        )
        if description is not None:
            record = await self._update(current.project, current.run_id, description=description)
        await self.worker.judge.run_changed(record)
        return record

    async def update_values(self, project: str, run_id: str, values: dict[str, Any]) -> RunRecord:
        """Set single-value metrics (DigitalHub `single_value=True`)."""
        current = await self.get(project, run_id)
        for key in values:
            check_name("value name", key)
        return await self._update(
            current.project, current.run_id, values={**current.values, **values}
        )

    async def update_config(self, project: str, run_id: str, entries: dict[str, Any]) -> RunRecord:
        current = await self.get(project, run_id)
        entries = dict(entries)
        description = None
        if DESCRIPTION_KEY in entries:
            value = entries.pop(DESCRIPTION_KEY)
            if not isinstance(value, str):
                raise errors.invalid(
                    "INVALID_DESCRIPTION",
                    f"{DESCRIPTION_KEY} must be a string, got {type(value).__name__}",
                    field=DESCRIPTION_KEY,
                )
            description = value
        for key in entries:
            check_name("config key", key)
        return await self._update(
            current.project,
            current.run_id,
            config={**current.config, **entries} if entries else None,
            description=description,
        )

    async def update_tags(
        self, project: str, run_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> RunRecord:
        current = await self.get(project, run_id)
        for tag in remove:
            check_name("tag", tag)
        tags = (set(current.tags) | set(add)) - set(remove)
        check_tags(add, total=len(tags))
        return await self._update(current.project, current.run_id, tags=sorted(tags))

    async def _update(self, project: str, run_id: str, **changes: Any) -> RunRecord:
        project, run_id = project_of(project), run_id_of(run_id)
        return await self.store.write(
            lambda s: s.update_run(project, run_id, now=time.time(), **changes)
        )
