"""Command line: ``python -m o2obroker.client listen|send ...``.

python -m o2obroker.client --user bob listen
python -m o2obroker.client --user alice send --to bob '{"text": "hi"}'
python -m o2obroker.client --token $JWT send --room store-42 '{"order": 991}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from o2obroker.client.binary import ClientError, connect


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m o2obroker.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--endpoint", default="tcp:127.0.0.1:9100", help="broker's binary TCP endpoint")
    p.add_argument("--user", help="user id (brokers with auth = none)")
    p.add_argument("--token", help="a JWT signed with the broker's secret")
    p.add_argument("--device", default="cli")
    p.add_argument("--resume", type=int, help="highest seq already processed")
    sub = p.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="send one message and print its receipt")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--to")
    target.add_argument("--room")
    send.add_argument("body", help="JSON body of the message")
    listen = sub.add_parser("listen", help="print every message as a JSON line")
    listen.add_argument("--join", action="append", default=[], help="join this room first")
    listen.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    return p


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    client = await connect(
        reactor,
        args.endpoint,
        user=args.user,
        token=args.token,
        device=args.device,
        resume=args.resume,
    )
    try:
        if args.command == "send":
            receipt = await client.send(json.loads(args.body), to=args.to, room=args.room)
            print(json.dumps(receipt))
        else:
            for room in args.join:
                await client.join(room)
            seen = 0
            while not args.count or seen < args.count:
                msg = await client.messages.get()
                print(json.dumps(msg, default=lambda b: {"$bytes": b.hex()}), flush=True)
                seen += 1
    finally:
        await client.bye()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def run(reactor: Any) -> Any:
        async def guarded() -> None:
            try:
                await _main(reactor, args)
            except ClientError as e:
                print(f"error: {e}", file=sys.stderr)
                raise SystemExit(1) from None

        return ensureDeferred(guarded())

    react(run)


if __name__ == "__main__":
    main()
