"""The store: a `Store` protocol with one implementation per engine, behind one async seam."""

from __future__ import annotations

from .base import Refused, RunCommit, Store, StoreUnavailable
from .seam import AsyncStore, open_store

__all__ = ["AsyncStore", "Refused", "RunCommit", "Store", "StoreUnavailable", "open_store"]
