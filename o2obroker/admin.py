"""Command line for the shared app registry: ``python -m o2obroker.admin apps ...``.

python -m o2obroker.admin --redis redis://10.0.0.5:6379 apps list
python -m o2obroker.admin --config /etc/o2obroker.ini apps add shop --cluster eu
python -m o2obroker.admin --config /etc/o2obroker.ini apps add pos --cluster eu --set tier=gold
python -m o2obroker.admin --config /etc/o2obroker.ini apps remove shop

It edits the registry in the cluster's Redis, the one every node reads
(``app_refresh`` seconds at most until each admits or refuses the app).
``[app:ID]`` sections of a node's config file are that node's own and are
not listed or changed here. Exit status 1 with one line on any error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from o2obroker.backend.interface import BackendUnavailable
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import ConfigError, load
from o2obroker.routing.apps import app_settings, valid_name


class AdminError(Exception):
    """Something the operator must fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m o2obroker.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis", help="the cluster's Redis URL(s), as the nodes' redis key")
    where.add_argument("--config", help="a node's config file: its redis key is used")
    p.add_argument("--prefix", default="o2o", help="key prefix of the cluster (default: o2o)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to reach Redis (default: 5)")
    sub = p.add_subparsers(dest="what", required=True)
    apps = sub.add_parser("apps", help="the shared app registry")
    verbs = apps.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="print every shared app as JSON: id -> settings")
    add = verbs.add_parser("add", help="add an app, or change its cluster and settings")
    add.add_argument("app", help="the business id")
    add.add_argument("--cluster", required=True, help="the cluster that serves it")
    add.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a per-app setting kept beside the cluster (value: JSON, or a plain string)",
    )
    remove = verbs.add_parser("remove", help="remove an app: new hellos naming it get 403")
    remove.add_argument("app")
    return p


def _setting(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name or name == "cluster":
        raise AdminError(f"--set {text!r}: give NAME=VALUE (and --cluster for the cluster)")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _redis(args: argparse.Namespace) -> str:
    if args.redis:
        return str(args.redis)
    try:
        config = load(args.config)
    except ConfigError as e:
        raise AdminError(str(e)) from None
    if not config.redis:
        raise AdminError(f"{args.config}: no redis key; the app registry is shared through Redis")
    return config.redis


async def run(reactor: Any, args: argparse.Namespace, out: Any = sys.stdout) -> None:
    """Do what ``args`` say against the registry; AdminError for the operator."""
    settings: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if args.verb == "add":
        settings = dict(_setting(s) for s in args.set)
        try:
            record = app_settings(args.app, args.cluster, **settings)
        except ValueError as e:
            raise AdminError(str(e)) from None
    elif args.verb == "remove" and not valid_name(args.app):
        raise AdminError(f"{args.app!r} is not a valid business id")
    try:
        targets = parse_urls(_redis(args))
    except ValueError as e:
        raise AdminError(f"redis: {e}") from None
    backend = RedisBackend(targets, reactor, reactor, "admin", prefix=args.prefix)
    shard = backend.shards[0]  # the registry lives on the first server, as the nodes' does
    shard.start()
    try:
        try:
            await shard.when_ready().addTimeout(args.timeout, reactor)
        except Exception:
            why = shard.refused or "no answer"
            raise AdminError(f"cannot reach redis {shard.name}: {why}") from None
        await _do(backend, args, record, out)
    except BackendUnavailable as e:
        raise AdminError(str(e)) from None
    finally:
        await shard.stop()


async def _do(backend: RedisBackend, args: argparse.Namespace, record: Any, out: Any) -> None:
    if args.verb == "list":
        _, records = await backend.apps()
        out.write(json.dumps(records, indent=2, sort_keys=True) + "\n")
    elif args.verb == "add":
        changed = await backend.put_app(args.app, record)
        out.write(f"{args.app} {'added' if changed else 'unchanged'}: {json.dumps(record)}\n")
    elif not await backend.remove_app(args.app):
        raise AdminError(f"{args.app}: no such app in the shared registry")
    else:
        out.write(f"{args.app} removed\n")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def go(reactor: Any) -> Any:
        async def guarded() -> None:
            try:
                await run(reactor, args)
            except AdminError as e:
                print(f"error: {e}", file=sys.stderr)
                raise SystemExit(1) from None

        return ensureDeferred(guarded())

    react(go)


if __name__ == "__main__":
    main()
