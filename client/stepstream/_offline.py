"""Runs created without the service: the creation goes to the spool (docs/spool.md).

An offline run (mode="offline", or a creation that found the service unreachable) gets its
run ID from the client when none was given, and its spool's first entries are what the
service would have been asked: `CreateRun` (fork fields included), or for `resume_from` the
`RewindRun` with its tag and description updates. `stepstream sync` sends them first.
"""

from __future__ import annotations

import copy
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from stepstream.v1 import runs_pb2

from ._convert import config_json, plain_config
from ._policies import Policies
from ._spool import NewEntry, SpoolFile, spool_path, spool_root
from ._types import RunInfo
from .rules import DESCRIPTION_KEY

logger = logging.getLogger("stepstream")


def new_run_id() -> str:
    """A run ID of the service's own form (`run-` + 12 hex digits)."""
    return "run-" + secrets.token_hex(6)


def spool_meta(project: str, run_id: str, writer_id: str, address: str) -> dict[str, str]:
    return {"project": project, "run_id": run_id, "writer_id": writer_id, "address": address}


def sender_spool(
    policies: Policies,
    spool: SpoolFile | None,
    project: str,
    run_id: str,
    writer_id: str,
    address: str,
) -> dict[str, Any]:
    """The Sender's spool arguments for a Run: where it would spill, and for an offline run
    its open spool. A writer ID the Run generated starts at sequence 1 (docs/spool.md)."""
    generated = spool is not None or policies.generated_writer
    return {
        "on_full": policies.on_full,
        "on_unavailable": policies.on_unavailable,
        "spool_path": spool_path(spool_root(), project, run_id, writer_id),
        "spool_meta": spool_meta(project, run_id, writer_id, address),
        "spool_max_bytes": policies.spool_max_bytes,
        "spool": spool,
        "next_sequence": 1 if generated else None,
        "offline": spool is not None,
    }


def start_offline(
    request: runs_pb2.CreateRunRequest,
    rewind_run_id: str,
    rewind_step: float,
    config: Mapping[str, Any] | None,
    tags: list[str],
    policies: Policies,
    writer_id: str,
    address: str,
    why: str | None,
) -> tuple[RunInfo, SpoolFile]:
    """Create the run's spool with its creation entries; the run as the client sees it."""
    project = request.project
    description = request.description or None
    max_bytes = policies.spool_max_bytes
    run_id = rewind_run_id or request.run_id or new_run_id()
    entries: list[NewEntry] = []
    if rewind_run_id:
        merged = plain_config(config or {})
        if DESCRIPTION_KEY in merged:
            given = merged.pop(DESCRIPTION_KEY)
            description = given if description is None else description
        rewind = runs_pb2.RewindRunRequest(
            project=project, run_id=run_id, step=rewind_step, config_json=config_json(merged)
        )
        entries.append((0, 0, "RewindRun", rewind.SerializeToString()))
        if tags:
            update = runs_pb2.UpdateRunTagsRequest(project=project, run_id=run_id, add=tags)
            entries.append((0, 0, "UpdateRunTags", update.SerializeToString()))
        if description is not None:
            body = runs_pb2.UpdateRunConfigRequest(
                project=project,
                run_id=run_id,
                config_json=config_json({DESCRIPTION_KEY: description}),
            )
            entries.append((0, 0, "UpdateRunConfig", body.SerializeToString()))
    else:
        create = copy.deepcopy(request)
        create.run_id = run_id
        entries.append((0, 0, "CreateRun", create.SerializeToString()))
    path = spool_path(spool_root(), project, run_id, writer_id)
    spool = SpoolFile(
        path, create=spool_meta(project, run_id, writer_id, address), max_bytes=max_bytes
    )
    try:
        spool.append(entries)
    except BaseException:
        spool.close()
        raise
    if why is not None:
        logger.warning(
            "stepstream: %s; run %r is offline: everything is logged to %s (upload it with: "
            "stepstream sync %s)",
            why,
            run_id,
            path,
            path,
        )
    config_view = {k: v for k, v in plain_config(config or {}).items() if k != DESCRIPTION_KEY}
    info = RunInfo(
        run_id=run_id,
        project=project,
        experiment=request.experiment or None,
        state="RUNNING",
        tags=sorted(set(tags)),
        description=description or request.description or "",
        config=copy.deepcopy(config_view),
        incarnation_id="",
        incarnations=[],
    )
    return info, spool
