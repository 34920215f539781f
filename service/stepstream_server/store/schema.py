"""What every engine's schema versioning shares."""

from __future__ import annotations


class SchemaTooNew(RuntimeError):
    """The store was migrated by a newer stepstream than this one."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"the store at {where} has schema version {found}, but this stepstream knows only up"
            f" to version {known}: upgrade stepstream (or point it at another store)"
        )
        self.found = found
        self.known = known
