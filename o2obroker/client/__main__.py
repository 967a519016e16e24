"""Command line: ``python -m o2obroker.client listen|send ...``.

python -m o2obroker.client --user bob listen
python -m o2obroker.client --user bob listen --reconnect   # resume after a kick or restart
python -m o2obroker.client --user alice send --to bob '{"text": "hi"}'
python -m o2obroker.client --token $JWT send --room store-42 '{"order": 991}'
python -m o2obroker.client --route http://10.0.0.1:8080 --app shop --key store-42 --user bob listen
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater, react

from o2obroker.client.binary import BinaryClient, ClientClosed, ClientError, connect
from o2obroker.client.routed import LookupFailed, RoutedClient


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
    p.add_argument(
        "--route",
        action="append",
        metavar="URL",
        help="ask this node's HTTP port where --key lives (repeat for more nodes to ask), "
        "connect there instead of --endpoint, and move to the standby when that node dies",
    )
    p.add_argument("--app", help="the business id (with --route, and in the hello)")
    p.add_argument("--key", help="the key to route by (with --route); default: the user")
    sub = p.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="send one message and print its receipt")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--to")
    target.add_argument("--room")
    send.add_argument("body", type=_json_body, help="JSON body of the message")
    listen = sub.add_parser("listen", help="print every message as a JSON line")
    listen.add_argument("--join", action="append", default=[], help="join this room first")
    listen.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    listen.add_argument(
        "--reconnect",
        action="store_true",
        help="when the broker closes the connection (kick, drain, restart), connect again and"
        " resume after the last message printed; without it, exit 1 with the reason."
        " A replaced device (409) or a refused hello (401) always exits",
    )
    return p


def _json_body(text: str) -> Any:
    """The body argument, parsed before connecting: a typo is a usage error."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _json_line(frame: dict[str, Any]) -> str:
    """A frame as one JSON line, bytes as ``{"$bytes": base64}`` like the protocol's JSON."""
    return json.dumps(frame, default=lambda b: {"$bytes": base64.b64encode(b).decode("ascii")})


# the broker's answers that another try would only repeat
FINAL_CODES = (400, 401, 403, 409)


async def _listen(reactor: Any, args: argparse.Namespace) -> None:
    """Print messages until ``--count``; on a close, exit 1 or reconnect and resume."""
    hello: dict[str, Any] = {"t": "hello", "v": 1, "device": args.device}
    if args.token is not None:
        hello["token"] = args.token
    if args.user is not None:
        hello["user"] = args.user
    if args.resume is not None:
        hello["resume"] = {"last": args.resume}
    factory = Factory.forProtocol(lambda: BinaryClient(hello))
    connector = ClientService(
        clientFromString(reactor, args.endpoint),
        factory,
        retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
        clock=reactor,
    )
    connector.startService()
    seen = 0
    try:
        while True:
            # without --reconnect, a broker that cannot be reached is an error at once
            client = await connector.whenConnected(failAfterFailures=None if args.reconnect else 1)
            try:
                await client.welcome
                for room in args.join:
                    await client.join(room)
                while not args.count or seen < args.count:
                    msg = await client.next_message()
                    print(_json_line(msg), flush=True)
                    seen += 1
                await client.bye()
                return
            except (ClientClosed, ClientError) as e:
                if not args.reconnect or getattr(e, "code", None) in FINAL_CODES:
                    raise
                if client.last_seq:
                    hello["resume"] = {"last": client.last_seq}
                print(f"closed: {e}; reconnecting", file=sys.stderr, flush=True)
                await client.closed
                # the connector learns of the loss just after the client: let it
                await deferLater(reactor, 0, lambda: None)
    finally:
        # not from inside the connector's own callbacks (automat refuses re-entry)
        await deferLater(reactor, 0, lambda: None)
        await connector.stopService()


async def _routed(reactor: Any, args: argparse.Namespace) -> None:
    """``listen`` and ``send`` through a RoutedClient: it finds the node and follows it."""
    hello: dict[str, Any] = {"device": args.device}
    for name in ("token", "user"):
        if getattr(args, name) is not None:
            hello[name] = getattr(args, name)
    key = args.key or args.user
    if key is None:
        raise SystemExit("error: --route needs --key (or --user)")
    client = RoutedClient(reactor, args.route, app=args.app, key=key, hello=hello)
    if args.resume is not None:
        client.last_seq = args.resume
    seen = 0
    done: Deferred[None] = Deferred()

    def printed(msg: dict[str, Any]) -> None:
        nonlocal seen
        print(json.dumps(msg, default=lambda b: {"$bytes": b.hex()}), flush=True)
        seen += 1
        if args.count and seen >= args.count and not done.called:
            done.callback(None)

    client.on_msg = printed
    client.ended.addErrback(lambda f: done.called or done.errback(f))
    try:
        await client.start()
        if args.command == "send":
            receipt = await client.send(
                args.body, to=args.to, room=args.room, id=f"cli-{os.urandom(6).hex()}"
            )
            print(json.dumps(receipt))
            return
        for room in args.join:
            await client.join(room)
        await done
    finally:
        await client.stop()


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    if args.route:
        await _routed(reactor, args)
        return
    if args.command == "listen":
        await _listen(reactor, args)
        return
    client = await connect(
        reactor,
        args.endpoint,
        user=args.user,
        token=args.token,
        device=args.device,
        resume=args.resume,
        **({"app": args.app} if args.app else {}),
    )
    try:
        receipt = await client.send(args.body, to=args.to, room=args.room)
        print(json.dumps(receipt))
    finally:
        if client.lost is None:
            await client.bye()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def run(reactor: Any) -> Any:
        async def guarded() -> None:
            try:
                await _main(reactor, args)
            except (ClientError, ClientClosed, ConnectError, LookupFailed) as e:
                print(f"error: {e}", file=sys.stderr)
                raise SystemExit(1) from None

        return ensureDeferred(guarded())

    react(run)


if __name__ == "__main__":
    main()
