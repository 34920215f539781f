"""Addresses and links of the web view: what a run's `url` points at, and every path a page
links to (one rule per kind of link)."""

from __future__ import annotations

import socket
from urllib.parse import quote, urlencode


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the web address must be HOST:PORT, got {address!r}")
    return host, int(port)


def base_url(host: str, port: int, *, https: bool = False) -> str:
    """The web view's URL prefix for a bound host and port."""
    if host in ("0.0.0.0", "::"):  # a wildcard bind: link by this machine's name
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{port}"


def run_url(base: str, project: str, run_id: str) -> str:
    """Link to a run's page; empty when there is no web view."""
    return f"{base}{run_path(project, run_id)}" if base else ""


def experiment_url(base: str, project: str, experiment: str) -> str:
    """Link to an experiment's page; empty without a web view or an experiment."""
    return f"{base}{experiment_path(project, experiment)}" if base and experiment else ""


def run_path(project: str, run_id: str, incarnation_id: str = "") -> str:
    path = f"/runs/{quote(project, safe='')}/{quote(run_id, safe='')}"
    return path + ("?" + urlencode({"incarnation": incarnation_id}) if incarnation_id else "")


def experiment_path(project: str, experiment: str) -> str:
    return f"/experiments/{quote(project, safe='')}/{quote(experiment, safe='')}"


def lineage_path(project: str, run_id: str) -> str:
    return f"/lineage/{quote(project, safe='')}/{quote(run_id, safe='')}"


def project_path(project: str) -> str:
    return "/?" + urlencode({"project": project})


def compare_path(project: str, run_ids: list[str]) -> str:
    return "/compare?" + urlencode({"project": project, "run": run_ids}, doseq=True)
