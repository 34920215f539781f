"""The metadata a Run changes in order with its points: config entries, tags and single
values, checked at the call, queued behind what was logged before it and applied by the sender
(`Run._submit`), with the local copies (`run.config`, `run.tags`, `run.values`) updated at
once. `QueuedUpdates` is the part of `Run` that makes those calls."""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stepstream.v1 import runs_pb2

from ._convert import config_json, plain_config
from ._exceptions import InvalidArgumentError
from ._metadata import LocalMetadata
from ._operations import UNARY_TIMEOUT, UnaryCall
from ._origin import check_description_entry
from ._validate import check_name, check_tags
from .rules import DESCRIPTION_KEY


class QueuedUpdates(LocalMetadata):
    """log_configs, add_tags, remove_tags and single values (`log_metric(single_value=True)`)."""

    _project: str
    _run_id: str

    if TYPE_CHECKING:  # Run's own

        def _submit(
            self, name: str, call: UnaryCall | None = None, *, report: bool = True
        ) -> concurrent.futures.Future[Any]: ...

    def log_configs(self, config: Mapping[str, Any]) -> None:
        """Merge `config` into the run's config (a key "sys/description" sets the description).

        Checked now, sent by the background thread in order with the points; a failure goes
        to on_error. The local `run.config` / `run.description` are updated at once.
        """
        entries = plain_config(config)
        check_description_entry(config)
        request = runs_pb2.UpdateRunConfigRequest(
            project=self._project, run_id=self._run_id, config_json=config_json(entries)
        )
        self._submit(
            "UpdateRunConfig", lambda stub: stub.UpdateRunConfig(request, timeout=UNARY_TIMEOUT)
        )
        for key, value in entries.items():
            if key == DESCRIPTION_KEY:
                self._description = self._synced_description = value
            else:
                self._config[key] = value
                self._synced_config[key] = copy.deepcopy(value)

    def add_tags(self, tags: str | Iterable[str]) -> None:
        """Add tags (queued like log_configs; the local `run.tags` is updated at once)."""
        added = check_tags(tags)
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, add=added
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )
        self._tags = sorted(set(self._tags) | set(added))
        self._synced_tags = sorted(set(self._synced_tags) | set(added))

    def remove_tags(self, tags: str | Iterable[str]) -> None:
        """Remove tags (queued like log_configs; the local `run.tags` is updated at once)."""
        removed = check_tags(tags)
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, remove=removed
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )
        self._tags = sorted(set(self._tags) - set(removed))
        self._synced_tags = sorted(set(self._synced_tags) - set(removed))

    def _log_single_value(self, name: str, value: object, step: object, timestamp: object) -> None:
        check_name(name, "value name")
        if isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray)):
            raise InvalidArgumentError(
                f"single_value=True stores one number, got a {type(value).__name__} for "
                f"{name!r}; log a list without single_value to append it to the series"
            )
        if step is not None:
            raise InvalidArgumentError(
                f"single_value=True stores an attribute, which has no step (got step={step!r})"
            )
        if timestamp is not None:
            raise InvalidArgumentError(
                "single_value=True stores an attribute, which has no timestamp "
                f"(got timestamp={timestamp!r})"
            )
        # A number; typed JSON keeps its type (an int stays an int, NaN and infinities travel).
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgumentError(
                f"single value {name!r} must be a real number, got {type(value).__name__}: "
                f"{value!r:.100}"
            )
        values = plain_config({name: value}, "values")
        request = runs_pb2.UpdateRunConfigRequest(
            project=self._project, run_id=self._run_id, values_json=config_json(values, "values")
        )
        self._submit(
            "UpdateRunConfig", lambda stub: stub.UpdateRunConfig(request, timeout=UNARY_TIMEOUT)
        )
        self._info = dataclasses.replace(self._info, values={**self._info.values, **values})
