"""The read-only web view (SPEC §7): runs table, comparison charts, lineage graph, JSON API."""

from .api import DEFAULT_MAX_POINTS, MAX_MAX_POINTS
from .app import WebView
from .links import base_url, experiment_url, run_url, split_address

__all__ = [
    "DEFAULT_MAX_POINTS",
    "MAX_MAX_POINTS",
    "WebView",
    "base_url",
    "experiment_url",
    "run_url",
    "split_address",
]
