"""A Run's local metadata (DigitalHub: edit `run.config`, `run.tags`, `run.description`, then
`save()`; `refresh()` re-reads): `LocalMetadata` is the `RunHandle` whose metadata is local and
editable, and `Run` builds on it; `changes()` is what `save()` sends, checked before anything
is sent."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from . import configjson
from ._convert import plain_config
from ._exceptions import InvalidArgumentError
from ._handle import RunHandle
from ._types import RunInfo
from ._validate import check_tags
from .rules import DESCRIPTION_KEY

_M = TypeVar("_M", bound="LocalMetadata")


@dataclass(frozen=True)
class Changes:
    """What save() sends: config entries as typed JSON ("" for none), tags to add and remove."""

    config_json: str
    add: list[str]
    remove: list[str]


def _text(value: Any) -> str:
    return configjson.dumps({"v": value})


def changes(
    config: Mapping[str, Any],
    synced_config: Mapping[str, Any],
    description: object,
    synced_description: str,
    tags: Sequence[str],
    synced_tags: Sequence[str],
) -> Changes:
    """The local edits since the last read. A config entry counts as changed when its typed
    value differs (3 -> 3.0 is a change; NaN -> NaN is not)."""
    removed = sorted(key for key in synced_config if key not in config)
    if removed:
        raise InvalidArgumentError(
            f"config keys {removed} were removed from run.config, but the service's config "
            "can only be merged into; put them back (set them to None to clear them)"
        )
    if DESCRIPTION_KEY in config:
        raise InvalidArgumentError(
            f"run.config has a {DESCRIPTION_KEY!r} key; set run.description instead"
        )
    local = plain_config(config, "run.config")
    changed = {
        key: value
        for key, value in local.items()
        if key not in synced_config or _text(synced_config[key]) != _text(value)
    }
    if not isinstance(description, str):
        raise InvalidArgumentError(
            f"run.description must be a str, got {type(description).__name__}"
        )
    if description != synced_description:
        changed[DESCRIPTION_KEY] = description
    wanted = set(check_tags(tags, "run.tags"))
    return Changes(
        config_json=configjson.dumps(changed) if changed else "",
        add=sorted(wanted - set(synced_tags)),
        remove=sorted(set(synced_tags) - wanted),
    )


class LocalMetadata(RunHandle):
    """A RunHandle whose config, tags and description are local copies to edit and `save()`.
    Only Run builds on it (saving writes); the read-only handle is RunHandle itself."""

    _config: dict[str, Any]
    _synced_config: dict[str, Any]
    _tags: list[str]
    _synced_tags: list[str]
    _description: str
    _synced_description: str

    def _adopt(self, info: RunInfo) -> None:
        """Take `info` as the service's current view of the run (local edits are replaced)."""
        super()._adopt(info)
        self._config = copy.deepcopy(info.config)
        self._synced_config = copy.deepcopy(info.config)
        self._tags = list(info.tags)
        self._synced_tags = list(info.tags)
        self._description = info.description
        self._synced_description = info.description

    @property
    def config(self) -> dict[str, Any]:
        """The run's config, as a local dict: edit it in place or assign a new dict, then call
        `save()` to push the changes (values keep their types: ints, floats, bools, None)."""
        return self._config

    @config.setter
    def config(self, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise InvalidArgumentError(f"config must be a dict, got {type(value).__name__}")
        self._config = dict(value)

    @property
    def tags(self) -> list[str]:
        """The run's tags, as a local list: edit it or assign a new list, then `save()`."""
        return self._tags

    @tags.setter
    def tags(self, value: Iterable[str]) -> None:
        self._tags = check_tags(value)

    @property
    def description(self) -> str:
        """The run's description (attribute sys/description), local until `save()`."""
        return self._description

    @description.setter
    def description(self, value: str) -> None:
        if not isinstance(value, str):
            raise InvalidArgumentError(f"description must be a str, got {type(value).__name__}")
        self._description = value

    def save(self: _M) -> _M:
        """Push the local metadata you changed to the service, then refresh. Returns the Run.

        Local metadata is `run.config`, `run.tags` and `run.description`. Config entries
        added or changed since the last read are merged into the service's config; tags
        added or removed locally are added or removed; a changed description is set. Changes
        made on the service meanwhile by others are kept (only your edits are sent). The
        service's config can only be merged into, so a config key deleted locally raises
        InvalidArgumentError (set it to None instead). Everything is checked before anything
        is sent; earlier log calls and queued updates are applied first.
        """
        todo = changes(
            self._config,
            self._synced_config,
            self._description,
            self._synced_description,
            self._tags,
            self._synced_tags,
        )
        self._flush()
        with self._reader() as client:
            if todo.config_json:
                client.update_run_config(self._project, self._run_id, config_json=todo.config_json)
            if todo.add or todo.remove:
                client.update_run_tags(
                    self._project, self._run_id, add=todo.add, remove=todo.remove
                )
            info = client.get_run(self._project, self._run_id)
        self._adopt(info)
        return self
