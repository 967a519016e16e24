"""Long-poll under load: deliveries/s and polls/s with many held polls.

    .venv/bin/python bench/longpoll_load.py [--sessions 1000] [--messages 100000] [--batch 200]

A real broker (`twistd -n o2obroker`, embedded backend). ``--sessions``
long-poll clients each open a session and keep one poll held at all times, on
a keep-alive connection of their own; as soon as a poll returns, the next one
goes out with the new ``pos`` and an ``ack`` of what it got. One binary TCP
client sends ``--messages`` messages round robin to those users, in writes of
``--batch`` sends, keeping at most ``--window`` writes in flight. A poll
takes every frame that is ready for its session, so under load a poll
carries many messages: the figure to watch is deliveries/s against polls/s.
The clients count frames by a marker in the bytes, without decoding them.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import time

import cbor2
from _common import free_port, raise_nofile, start_broker
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

_len = struct.Struct(">I")
_POS = re.compile(rb'^\{"pos":(\d+)')
_MSG = b'"t":"msg"'


class Poller(Protocol):
    """One long-poll client on one keep-alive connection."""

    def __init__(self, user: str, stats: dict[str, int]) -> None:
        self.user = user
        self.stats = stats
        self.buf = b""
        self.sid = ""
        self.pos = 0
        self.got = 0
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.polling = False

    def connectionMade(self) -> None:
        body = json.dumps({"t": "hello", "user": self.user, "device": "d"}).encode()
        self.transport.write(
            b"POST /lp/open HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def poll(self) -> None:
        self.stats["polls"] += 1
        ack = b"&ack=%d" % self.got if self.got else b""
        self.transport.write(
            b"GET /lp/poll?sid=%s&pos=%d%s HTTP/1.1\r\nHost: b\r\n\r\n"
            % (self.sid.encode(), self.pos, ack)
        )

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
            end = head_end + 4 + n
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4 : end]
            self.buf = self.buf[end:]
            self.response(body)

    def response(self, body: bytes) -> None:
        if not self.sid:
            answer = json.loads(body)
            self.sid, self.pos = answer["sid"], answer["pos"]
            self.opened.callback(None)
            return
        self.pos = int(_POS.match(body).group(1))
        n = body.count(_MSG)
        if n:
            self.got += n
            self.stats["delivered"] += n
            self.stats["carrying"] += 1
            self.stats["on_delivery"]()
        self.poll()


class Sender(Protocol):
    def __init__(self) -> None:
        self.welcome: defer.Deferred[None] = defer.Deferred()
        self.receipts = 0
        self.buf = b""

    def connectionMade(self) -> None:
        payload = cbor2.dumps({"t": "hello", "user": "sender", "device": "s"})
        self.transport.write(_len.pack(len(payload)) + payload)

    def dataReceived(self, data: bytes) -> None:
        if not self.welcome.called:
            self.welcome.callback(None)


def frame(obj: dict) -> bytes:
    payload = cbor2.dumps(obj)
    return _len.pack(len(payload)) + payload


async def run(args: argparse.Namespace, http: int, tcp: int) -> None:
    stats = {"polls": 0, "delivered": 0, "carrying": 0, "on_delivery": lambda: None}
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", http, timeout=30)
    pollers = []
    for i in range(0, args.sessions, 100):
        group = [
            await connectProtocol(ep, Poller(f"lp{j}", stats))
            for j in range(i, min(args.sessions, i + 100))
        ]
        await defer.gatherResults([p.opened for p in group])
        pollers.extend(group)
    for p in pollers:
        p.poll()
    sender = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcp), Sender())
    await sender.welcome
    n, batch = args.messages, args.batch
    chunks = [
        b"".join(
            frame({"t": "send", "id": f"m{k}", "to": f"lp{k % args.sessions}", "body": {"n": k}})
            for k in range(start, min(n, start + batch))
        )
        for start in range(0, n, batch)
    ]
    print(f"{args.sessions} sessions open, polls held; sending {n:,} messages", flush=True)
    done: defer.Deferred[None] = defer.Deferred()
    sent = [0]

    def pump() -> None:
        while sent[0] < len(chunks) and sent[0] - stats["delivered"] // batch < args.window:
            sender.transport.write(chunks[sent[0]])
            sent[0] += 1
        if stats["delivered"] >= n and not done.called:
            done.callback(None)

    stats["on_delivery"] = pump
    polls_before = stats["polls"]
    start = time.perf_counter()
    pump()
    await done
    elapsed = time.perf_counter() - start
    polls = stats["polls"] - polls_before
    print(f"deliveries/s        {n / elapsed:10,.0f}")
    print(f"polls answered/s    {polls / elapsed:10,.0f}")
    print(f"messages per poll   {n / max(1, stats['carrying']):10.1f}")
    for p in pollers:
        p.transport.loseConnection()
    sender.transport.loseConnection()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--window", type=int, default=10)
    args = p.parse_args()
    raise_nofile(20_000)
    tcp, http = free_port(), free_port()
    proc = start_broker(tcp, http=http)
    try:
        d = defer.ensureDeferred(run(args, http, tcp))
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
