"""Where a new Run comes from: a fork parent, a run to rewind (resume_from), or nothing; the
checks of those arguments, and opening the run on the service (`open_run`: created, rewound,
resumed, or offline into a spool)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grpc

from stepstream.v1 import runs_pb2

from ._client import RunClient
from ._convert import config_json, plain_config, run_info_from_proto
from ._exceptions import InvalidArgumentError, RPCError, reworded
from ._offline import start_offline
from ._policies import Policies
from ._spool import SpoolFile
from ._types import RunInfo
from ._validate import check_id, check_real, parse_run_moment
from .rules import DESCRIPTION_KEY


def branch(
    run_id: str | None,
    *,
    fork_run_id: str | None,
    fork_step: float | None,
    fork_incarnation_id: str | None,
    fork_from: str | None,
    resume_from: str | None,
    resume: bool,
    inherit_configs: bool,
) -> Branch:
    """Check the arguments that say where a run comes from (fork, rewind, new)."""
    if fork_from is not None and resume_from is not None:
        raise InvalidArgumentError(
            "fork_from and resume_from are mutually exclusive: fork_from starts a new run from "
            "'<run_id>?_step=<N>', resume_from rewinds that run itself; give one of them"
        )
    moment = (
        "fork_from" if fork_from is not None else "resume_from" if resume_from is not None else None
    )
    if moment is not None:
        others = [
            what
            for what, value in (
                ("fork_run_id", fork_run_id),
                ("fork_step", fork_step),
                ("fork_incarnation_id", fork_incarnation_id),
            )
            if value is not None
        ]
        if others:
            raise InvalidArgumentError(
                f"{moment} already names the run and the step ('<run_id>?_step=<N>'); do not "
                f"also give {', '.join(others)}"
            )
    if fork_from is not None:
        parent, step = parse_run_moment(fork_from, "fork_from")
        if run_id is not None and run_id == parent:
            raise InvalidArgumentError(
                f"fork_from {fork_from!r} names this run's own run_id {run_id!r}; a fork is a "
                f"new run and needs another run_id (or none). To cut run {run_id!r} back to "
                f"that step and continue it, use resume_from={fork_from!r} instead"
            )
        return Branch(fork_run_id=parent, fork_step=step)
    if resume_from is not None:
        target, step = parse_run_moment(resume_from, "resume_from")
        if run_id is not None and run_id != target:
            raise InvalidArgumentError(
                f"run_id {run_id!r} and resume_from {resume_from!r} name different runs; "
                f"resume_from rewinds and attaches to run {target!r}: omit run_id or give "
                f"run_id={target!r}"
            )
        if resume:
            raise InvalidArgumentError(
                "resume_from already attaches to the run it rewinds; drop resume=True"
            )
        if inherit_configs:
            raise InvalidArgumentError(
                "inherit_configs applies to forks; resume_from keeps the run's config (merge "
                "entries into it with config=...)"
            )
        return Branch(rewind_run_id=target, rewind_step=step)
    if fork_incarnation_id is not None:
        if fork_run_id is not None:
            raise InvalidArgumentError(
                "give fork_run_id or fork_incarnation_id, not both (got "
                f"fork_run_id={fork_run_id!r}, fork_incarnation_id={fork_incarnation_id!r})"
            )
        check_id(fork_incarnation_id, "fork_incarnation_id")
        if fork_step is None:
            raise InvalidArgumentError(
                f"fork_incarnation_id needs fork_step (got fork_incarnation_id="
                f"{fork_incarnation_id!r}, fork_step=None)"
            )
        return Branch(
            fork_incarnation_id=fork_incarnation_id, fork_step=check_real(fork_step, "fork_step")
        )
    if (fork_run_id is None) != (fork_step is None):
        raise InvalidArgumentError(
            "fork_run_id and fork_step must be given together "
            f"(got fork_run_id={fork_run_id!r}, fork_step={fork_step!r})"
        )
    if fork_run_id is not None:
        check_id(fork_run_id, "fork_run_id")
        return Branch(fork_run_id=fork_run_id, fork_step=check_real(fork_step, "fork_step"))
    if inherit_configs:
        raise InvalidArgumentError(
            "inherit_configs=True needs a fork: give fork_run_id, fork_incarnation_id or fork_from"
        )
    return Branch()


@dataclasses.dataclass(frozen=True)
class Branch:
    """Where a new Run comes from: a fork parent (run or incarnation, with the step), a run
    to rewind (resume_from), or nothing."""

    fork_run_id: str = ""
    fork_incarnation_id: str = ""
    fork_step: float | None = None
    rewind_run_id: str = ""
    rewind_step: float = 0.0


def check_description_entry(config: Mapping[str, Any]) -> None:
    if DESCRIPTION_KEY in config and not isinstance(config[DESCRIPTION_KEY], str):
        value = config[DESCRIPTION_KEY]
        raise InvalidArgumentError(
            f"config[{DESCRIPTION_KEY!r}] sets the description and must be a str, got "
            f"{type(value).__name__}"
        )


def rewind_existing(
    client: RunClient,
    project: str,
    run_id: str,
    step: float,
    *,
    experiment_name: str | None,
    config: Mapping[str, Any] | None,
    tags: list[str],
    description: str | None,
    connect_timeout: float,
) -> RunInfo:
    """resume_from: cut the existing run back to `step`, then apply the metadata args."""
    entries = plain_config(config or {})
    if DESCRIPTION_KEY in entries:  # as in CreateRun and log_configs: the description
        given = entries.pop(DESCRIPTION_KEY)
        description = given if description is None else description
    # GetRun first: a missing run is RUN_NOT_FOUND before anything changes, and a service
    # that is still starting gets connect_timeout to come up.
    current = client.get_run(project, run_id, timeout=connect_timeout, wait_for_ready=True)
    if experiment_name is not None and current.experiment != experiment_name:
        raise InvalidArgumentError(
            f"resume_from names run {run_id!r}, which belongs to experiment "
            f"{current.experiment!r}, not experiment_name={experiment_name!r}"
        )
    info = client.rewind_run(project, run_id, step, config_json(entries))
    if tags:
        info = client.update_run_tags(project, run_id, add=tags)
    if description is not None:
        described = config_json({DESCRIPTION_KEY: description})
        info = client.update_run_config(project, run_id, config_json=described)
    return info


@dataclasses.dataclass(frozen=True)
class Opened:
    """The run as the service (or, offline, its spool) has it once a Run is created."""

    info: RunInfo
    spool: SpoolFile | None = None  # an offline run's spool
    parent_fallback: bool = False  # the fork parent was missing: forked from the head run


def open_run(
    client: RunClient,
    request: runs_pb2.CreateRunRequest,
    branch: Branch,
    policies: Policies,
    *,
    writer_id: str,
    config: Mapping[str, Any] | None,
    tags: list[str],
    description: str | None,
    experiment_name: str | None,
    resume: bool,
    connect_timeout: float,
) -> Opened:
    """Create the run (fork, resume) or rewind it, or start it offline into a spool: as the
    policies say, from the start or once the service turns out to be unreachable. Closes
    `client` when it fails."""
    address = client.address
    offline = (request, branch.rewind_run_id, branch.rewind_step, config, tags, policies)
    try:
        if policies.offline:
            return Opened(*start_offline(*offline, writer_id, address, None))
        if branch.rewind_run_id:
            info = rewind_existing(
                client,
                request.project,
                branch.rewind_run_id,
                branch.rewind_step,
                experiment_name=experiment_name,
                config=config,
                tags=tags,
                description=description,
                connect_timeout=connect_timeout,
            )
            return Opened(info)
        response = client.create_run(request, timeout=connect_timeout)
        info = run_info_from_proto(response.run)
        if resume and info.state != "RUNNING":
            info = client.resume_run(info.project, info.run_id)
        return Opened(info, parent_fallback=response.parent_fallback)
    except RPCError as exc:
        if policies.goes_offline(exc):
            why = f"the service at {address} is unreachable ({exc.message})"
            return Opened(*start_offline(*offline, writer_id, address, why))
        client.close()
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            action = "rewind" if branch.rewind_run_id else "create"
            raise reworded(
                exc,
                f"could not {action} the run: no answer from the stepstream service at "
                f"{address} within {connect_timeout:g} s ({exc.message})",
            ) from None
        raise
    except BaseException:
        client.close()
        raise
