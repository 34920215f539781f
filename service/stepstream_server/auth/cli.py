"""`stepstream tokens create|list|revoke`: tokens managed on the store directly (the same
`--data-dir`/`--store` as `serve`), so the first admin token needs no running service and a
running one sees a new or revoked token at its next check; or, with `--address`, through a
running service's TokenService (`--token`/$STEPSTREAM_TOKEN an admin token there, and the
client's TLS options), which checks who may do what (auth/policy.py)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from stepstream.rules import parse_duration

from ..store.tokens import ALL_PROJECTS, TokenStore
from .tokens import ROLES, new_token


def add_parser(sub: Any, defaults: Any) -> None:
    tokens = sub.add_parser("tokens", help="create, list and revoke access tokens (on the store)")
    actions = tokens.add_subparsers(dest="action", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
        wire = p.add_argument_group("through a running service (instead of the store)")
        wire.add_argument(
            "--address",
            default=None,
            metavar="HOST:PORT",
            help="manage tokens through this service's TokenService (needs an admin --token)",
        )
        wire.add_argument(
            "--token", default=None, help="an admin token there (default $STEPSTREAM_TOKEN)"
        )
        wire.add_argument(
            "--tls", action="store_true", default=None, help="TLS with the system's roots"
        )
        wire.add_argument("--tls-ca", default=None, metavar="PEM", help="TLS trusting this CA")
        wire.add_argument("--tls-cert", default=None, metavar="PEM", help="mTLS certificate")
        wire.add_argument("--tls-key", default=None, metavar="PEM", help="its key")
        p.add_argument(
            "--data-dir",
            type=Path,
            default=defaults.data_dir,
            help="the service's data directory (default %(default)s; env STEPSTREAM_DATA_DIR)",
        )
        p.add_argument(
            "--store",
            default=defaults.store,
            metavar="URL",
            help="the service's store URL, as for serve (env STEPSTREAM_STORE)",
        )

    create = actions.add_parser("create", help="make a token and print it (once)")
    create.add_argument(
        "--project", required=True, help=f"the project it may act in, or {ALL_PROJECTS!r} for all"
    )
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="what it is for (shown by list)")
    create.add_argument("--expires", default=None, metavar="DURATION", help="e.g. 30d, 12h, 2w")
    store_options(create)
    listing = actions.add_parser("list", help="every token (never the secrets)")
    listing.add_argument("--json", action="store_true")
    listing.add_argument(
        "--project",
        default=None,
        help="only this project's tokens (with --address: empty,"
        " every token the caller administers)",
    )
    store_options(listing)
    revoke = actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", metavar="ID")
    store_options(revoke)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%SZ"
    )


def open_tokens(store_url: str) -> TokenStore:
    """The token table of a store, migrated first (a fresh store gets its whole schema). Only
    the migrations: opening the store would replay and flush a live service's staged rows."""
    from ..store.seam import migrate_store

    migrate_store(store_url)
    return TokenStore(store_url)


def _print_list(rows: list[Any], as_json: bool) -> None:
    """`rows` are TokenRecords or the client's TokenInfos (the same fields, and a state)."""
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": r.token_id,
                        "name": r.name,
                        "project": r.project,
                        "role": r.role,
                        "state": r.state if isinstance(r.state, str) else r.state(),
                        "created_at": r.created_at,
                        "expires_at": r.expires_at,
                        "revoked_at": r.revoked_at,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    print(f"{'ID':16}  {'PROJECT':20}  {'ROLE':5}  {'STATE':7}  {'EXPIRES':20}  NAME")
    for r in rows:
        state = r.state if isinstance(r.state, str) else r.state()
        print(
            f"{r.token_id:16}  {r.project:20}  {r.role:5}  {state:7}  "
            f"{_when(r.expires_at):20}  {r.name}"
        )


def _created(token_id: str, role: str, project: str, expires_at: float | None) -> str:
    scope = "every project" if project == ALL_PROJECTS else repr(project)
    return (
        f"token {token_id}: role {role} in {scope}, expires {_when(expires_at)}. "
        "It is shown only now: keep it secret."
    )


def run_remote(args: argparse.Namespace) -> int:
    """The same actions through a running service's TokenService."""
    import stepstream

    connection: dict[str, Any] = {
        "tls": args.tls,
        "root_certificates": args.tls_ca,
        "client_certificate": args.tls_cert,
        "client_key": args.tls_key,
        "token": args.token,
    }
    try:
        if args.action == "create":
            token, info = stepstream.create_token(
                args.project,
                args.role,
                name=args.name,
                expires=args.expires,
                address=args.address,
                **connection,
            )
            print(token)
            print(
                _created(info.token_id, info.role, info.project, info.expires_at), file=sys.stderr
            )
            return 0
        if args.action == "list":
            rows = stepstream.list_tokens(args.project, address=args.address, **connection)
            _print_list(rows, args.json)
            return 0
        info, already = stepstream.revoke_token(args.token_id, address=args.address, **connection)
    except stepstream.InvalidArgumentError as exc:
        print(f"stepstream: {exc}", file=sys.stderr)
        return 2
    except stepstream.RPCError as exc:
        print(f"stepstream: {exc}", file=sys.stderr)
        return 4 if exc.reason == "TOKEN_NOT_FOUND" else 1
    if already:
        print(f"stepstream: token {args.token_id!r} is already revoked", file=sys.stderr)
        return 1
    print(f"token {info.token_id} revoked")
    return 0


def run(args: argparse.Namespace, store_url: str) -> int:
    if args.address is not None:
        return run_remote(args)
    if args.action == "create":
        from stepstream.rules import id_problem

        if args.project != ALL_PROJECTS and id_problem(args.project):
            print(
                f"stepstream: --project {args.project!r}: {id_problem(args.project)}",
                file=sys.stderr,
            )
            return 2
        try:
            expires = None if args.expires is None else parse_duration(args.expires)
        except ValueError as exc:
            print(f"stepstream: {exc}", file=sys.stderr)
            return 2
        token, record = new_token(args.project, args.role, args.name, expires)
    tokens = open_tokens(store_url)
    try:
        if args.action == "create":
            tokens.add(record)
            print(token)
            print(
                _created(record.token_id, record.role, record.project, record.expires_at),
                file=sys.stderr,
            )
            return 0
        if args.action == "list":
            records = [
                r for r in tokens.list() if args.project is None or r.project == args.project
            ]
            _print_list(records, args.json)
            return 0
        if tokens.revoke(args.token_id, time.time()):
            print(f"token {args.token_id} revoked")
            return 0
        found = tokens.get(args.token_id)
        why = "is already revoked" if found is not None else "does not exist"
        print(f"stepstream: token {args.token_id!r} {why}", file=sys.stderr)
        return 4 if found is None else 1
    finally:
        tokens.close()
