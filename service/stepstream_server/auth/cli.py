"""`stepstream tokens create|list|revoke`: tokens managed on the store directly (the same
`--data-dir`/`--store` as `serve`), so the first admin token needs no running service and a
running one sees a new or revoked token at its next check."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..store.tokens import ALL_PROJECTS, TokenRecord, TokenStore
from .tokens import ROLES, new_token, parse_duration


def add_parser(sub: Any, defaults: Any) -> None:
    tokens = sub.add_parser("tokens", help="create, list and revoke access tokens (on the store)")
    actions = tokens.add_subparsers(dest="action", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
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


def _state(record: TokenRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "expired" if record.expired() else "active"


def open_tokens(store_url: str) -> TokenStore:
    """The token table of a store, migrated first (a fresh store gets its whole schema)."""
    from ..store import open_store

    open_store(store_url).close()
    return TokenStore(store_url)


def run(args: argparse.Namespace, store_url: str) -> int:
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
                f"token {record.token_id}: role {record.role} in "
                f"{'every project' if record.project == ALL_PROJECTS else repr(record.project)}"
                f", expires {_when(record.expires_at)}. It is shown only now: keep it secret.",
                file=sys.stderr,
            )
            return 0
        if args.action == "list":
            records = tokens.list()
            if args.json:
                rows = [
                    {
                        "id": r.token_id,
                        "name": r.name,
                        "project": r.project,
                        "role": r.role,
                        "state": _state(r),
                        "created_at": r.created_at,
                        "expires_at": r.expires_at,
                        "revoked_at": r.revoked_at,
                    }
                    for r in records
                ]
                print(json.dumps(rows, indent=2))
                return 0
            print(f"{'ID':16}  {'PROJECT':20}  {'ROLE':5}  {'STATE':7}  {'EXPIRES':20}  NAME")
            for r in records:
                print(
                    f"{r.token_id:16}  {r.project:20}  {r.role:5}  {_state(r):7}  "
                    f"{_when(r.expires_at):20}  {r.name}"
                )
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
