"""`stepstream serve`: the service on embedded defaults unless told otherwise."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .auth.settings import SecuritySettings
from .config import Settings


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one: every gRPC connection and every
    store connection is a descriptor, and a soft limit of 1024 caps the idle streams a service
    can hold far below what it otherwise could (docs/faults.md). Returns (soft, hard)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel caps lower
            pass
    return soft, hard


def add_mesh_flags(serve: argparse.ArgumentParser, defaults: Settings) -> None:
    """Metrics, keepalive and connection age (docs/drain.md)."""
    group = serve.add_argument_group("metrics and service mesh")
    group.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)",
    )
    group.add_argument(
        "--keepalive-time",
        type=float,
        default=defaults.keepalive_seconds,
        metavar="SECONDS",
        help="ping each connection this often (default %(default)s)",
    )
    group.add_argument(
        "--keepalive-timeout",
        type=float,
        default=defaults.keepalive_timeout_seconds,
        metavar="SECONDS",
        help="drop a connection whose ping is not answered in time (default %(default)s)",
    )
    group.add_argument(
        "--max-connection-age",
        type=float,
        default=defaults.max_connection_age_seconds,
        metavar="SECONDS",
        help="send GOAWAY to connections this old so load balancers can move long streams;"
        " 0: never (default %(default)s)",
    )
    group.add_argument(
        "--max-connection-age-grace",
        type=float,
        default=defaults.max_connection_age_grace_seconds,
        metavar="SECONDS",
        help="then end the calls still on such a connection after this long; clients"
        " reconnect and re-send (default %(default)s)",
    )


def mesh_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    for flag in ("keepalive_time", "keepalive_timeout", "max_connection_age_grace"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be above 0 seconds")
    if not args.max_connection_age >= 0:
        parser.error("--max-connection-age must be 0 (off) or above")
    return {
        "metrics_address": args.metrics_address,
        "keepalive_seconds": args.keepalive_time,
        "keepalive_timeout_seconds": args.keepalive_timeout,
        "max_connection_age_seconds": args.max_connection_age,
        "max_connection_age_grace_seconds": args.max_connection_age_grace,
    }


def add_security_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("security (README: Security)")
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="PEM",
        help="serve gRPC and the web view over TLS with this certificate chain",
    )
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="its key")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="require client certificates signed by this CA (mTLS)",
    )
    group.add_argument(
        "--auth",
        default=os.environ.get("STEPSTREAM_AUTH", "off"),
        choices=["off", "required"],
        help="required: every RPC and web request needs a token (stepstream tokens create)"
        " (default %(default)s; env STEPSTREAM_AUTH)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --address/--web-address without --auth required"
        " (and a non-loopback --metrics-address)",
    )
    group.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow a non-loopback --metrics-address: /metrics takes no token, even with"
        " --auth required",
    )


def security_settings(args: argparse.Namespace) -> SecuritySettings:
    return SecuritySettings(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth=args.auth,
        insecure=args.insecure,
        metrics_public=args.metrics_public,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stepstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ingestion service")
    defaults = Settings()
    serve.add_argument(
        "--address", default=defaults.address, help="host:port to bind (default %(default)s)"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="where the store (and the embedded Redis socket) live (default %(default)s; env STEPSTREAM_DATA_DIR)",
    )
    serve.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis (redis://host:port/db or unix:///path) instead of starting the embedded one (env STEPSTREAM_REDIS_URL)",
    )
    serve.add_argument(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("STEPSTREAM_REDIS_CLUSTER", "") not in ("", "0", "false"),
        help="--redis-url names one node of a Redis Cluster (env STEPSTREAM_REDIS_CLUSTER=1)",
    )
    serve.add_argument(
        "--store",
        default=defaults.store,
        metavar="URL",
        help="postgresql://user@host:port/db or sqlite:///path (env STEPSTREAM_STORE;"
        " default: SQLite in the data directory)",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=defaults.lease_seconds,
        metavar="SECONDS",
        help="how long a replica's judgment may stay uncommitted before the others fence it"
        " (default %(default)s)",
    )
    serve.add_argument(
        "--sqlite-synchronous",
        default=defaults.sqlite_synchronous,
        choices=["FULL", "NORMAL"],
        help="FULL fsyncs every group commit; NORMAL survives process crashes but not power loss",
    )
    serve.add_argument(
        "--grace", type=float, default=defaults.grace_seconds, help="drain time on SIGTERM, seconds"
    )
    serve.add_argument("--max-queued-points", type=int, default=defaults.max_queued_points)
    serve.add_argument(
        "--web-address",
        default=None,
        metavar="HOST:PORT",
        help="also serve the read-only web view over HTTP on this address (off by default)",
    )
    serve.add_argument("--log-level", default="INFO")
    add_mesh_flags(serve, defaults)
    add_security_options(serve)
    from .auth.cli import add_parser as add_tokens_parser

    add_tokens_parser(sub, defaults)
    args = parser.parse_args(argv)
    if args.command == "tokens":
        from .auth.cli import run as run_tokens

        where = Settings(data_dir=args.data_dir, store=args.store)
        raise SystemExit(run_tokens(args, where.store_url))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings(
        address=args.address,
        data_dir=args.data_dir,
        redis_url=args.redis_url or os.environ.get("STEPSTREAM_REDIS_URL") or None,
        redis_cluster=args.redis_cluster,
        store=args.store,
        lease_seconds=args.lease,
        sqlite_synchronous=args.sqlite_synchronous,
        grace_seconds=args.grace,
        max_queued_points=args.max_queued_points,
        web_address=args.web_address,
        **mesh_settings(parser, args),
        security=security_settings(args),
    )
    if settings.redis_cluster and not settings.redis_url:
        parser.error("--redis-cluster needs --redis-url naming one node of the cluster")
    soft, hard = raise_fd_limit()
    logging.getLogger("stepstream").info("open files limit: %d (hard %d)", soft, hard)
    from .datadir import DataDirInUse
    from .server import serve as run
    from .store.schema import SchemaTooNew
    from .store.sqlite import StoreLocked

    try:
        asyncio.run(run(settings))
    except (DataDirInUse, SchemaTooNew, StoreLocked, ValueError) as exc:
        print(f"stepstream: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
