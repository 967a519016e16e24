"""1:1 relay over WebSocket: the broker, with and without batching, against a bare Autobahn relay.

    .venv/bin/python bench/ws_relay.py [--messages 100000] [--batch 100] [--rounds 3] [--idle 2000]

In the same run, alternately: (a) bench/bare_ws_relay.py, an Autobahn server
that forwards every message to its peer as one WebSocket message; (b) a real
broker (`twistd -n o2obroker`, embedded backend) with clients that do not ask
for batching: every send, msg and receipt is one WebSocket message; (c) the
same broker with `"batch": true` clients, whose sends go as arrays of
``--batch`` frames and who get one array per reactor turn. Through the broker
every message is decoded, validated, deduplicated by id, stored in the inbox
with a seq, encoded, written, answered with a receipt and acknowledged.

The client writes pre-encoded frames (mask key 0) and counts frames by a
marker in the byte stream, so that it is not the bottleneck. Then, with
``--idle N``, the memory per idle WebSocket connection: N connections that
said hello, against N bare Autobahn connections.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import struct
import time

from _common import drive, free_port, raise_nofile, settle, start_broker, start_script, wait_port
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

MASK0 = b"\x00\x00\x00\x00"


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame with mask key 0: the payload goes as it is."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", n)
    return head + MASK0 + payload


def handshake(path: str = "/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Client(Protocol):
    """Counts a marker in the server's byte stream; optionally acks cumulatively."""

    def __init__(self, marker: bytes, ack: bool = False) -> None:
        self.marker = marker
        self.ack = ack
        self.count = 0
        self.tail = b""
        self.upgraded: defer.Deferred[None] = defer.Deferred()
        self.welcome: defer.Deferred[None] = defer.Deferred()
        self.head = b""
        self.on_count = lambda: None

    def connectionMade(self) -> None:
        self.transport.write(handshake())

    def dataReceived(self, data: bytes) -> None:
        if not self.upgraded.called:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            assert b" 101 " in head.split(b"\r\n")[0], head
            self.upgraded.callback(None)
        if not self.welcome.called and b'"t":"welcome"' in data:
            self.welcome.callback(None)
        joined = self.tail + data
        n = joined.count(self.marker) - self.tail.count(self.marker)
        self.tail = joined[-(len(self.marker) - 1) :]
        if n:
            self.count += n
            if self.ack:
                # a fresh user's seqs are 1, 2, 3...: the count is the last seq
                self.transport.write(ws_frame(b'{"t":"ack","seq":%d}' % self.count))
            self.on_count()


def send_json(i: int, prefix: str) -> bytes:
    return json.dumps(
        {"t": "send", "id": f"{prefix}{i}", "to": "bob", "body": {"n": i}}, separators=(",", ":")
    ).encode()


async def run_once(port: int, mode: str, n: int, batch: int, window: int, prefix: str) -> float:
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    marker = b'"t":"send"' if mode == "bare" else b'"t":"msg"'
    receiver = await connectProtocol(ep, Client(marker, ack=mode != "bare"))
    await receiver.upgraded
    sender = await connectProtocol(ep, Client(b'"t":"receipt"'))
    await sender.upgraded
    batching = mode == "batch"
    if mode != "bare":
        for who, proto in (("bob", receiver), ("alice", sender)):
            hello = {"t": "hello", "user": f"{prefix}{who}", "device": "d", "batch": batching}
            proto.transport.write(ws_frame(json.dumps(hello).encode()))
        await receiver.welcome
        await sender.welcome
        user = f"{prefix}bob".encode()
    # pre-encoded writes: one WebSocket message per send, or arrays of `batch` sends
    chunks: list[bytes] = []
    for start in range(0, n, batch):
        sends = [send_json(i, prefix) for i in range(start, min(n, start + batch))]
        if mode != "bare":
            sends = [s.replace(b'"to":"bob"', b'"to":"' + user + b'"') for s in sends]
        if batching:
            chunks.append(ws_frame(b"[" + b",".join(sends) + b"]"))
        else:
            chunks.append(b"".join(ws_frame(s) for s in sends))
    return await drive(sender, receiver, chunks, batch, window, n, sender_counts=mode != "bare")


def start(kind: str) -> tuple[object, int]:
    port = free_port()
    if kind == "bare":
        proc = start_script("bare_ws_relay.py", str(port))
    else:
        proc = start_broker(free_port(), http=port)
    wait_port(port)
    return proc, port


async def relay(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"bare": [], "plain": [], "batch": []}
    for rnd in range(args.rounds):
        for mode in ("bare", "plain", "batch"):
            proc, port = start("bare" if mode == "bare" else "broker")
            try:
                rate = await run_once(
                    port, mode, args.messages, args.batch, args.window, f"r{rnd}{mode}-"
                )
                results[mode].append(rate)
                print(f"round {rnd + 1} {mode:6s} {rate:10,.0f} msgs/s", flush=True)
            finally:
                proc.terminate()
                proc.wait()
    bare = statistics.median(results["bare"])
    plain = statistics.median(results["plain"])
    batch = statistics.median(results["batch"])
    print(f"median bare Autobahn relay (one frame per message) {bare:10,.0f} msgs/s")
    print(f"median broker, no batching                         {plain:10,.0f} msgs/s")
    print(f"median broker, batch: true                         {batch:10,.0f} msgs/s")
    print(f"broker without batching / bare                     {plain / bare:10.2f}")
    print(f"broker with batching / bare                        {batch / bare:10.2f}")


def idle_memory(kind: str, n: int) -> float:
    """Blocking, before the reactor runs: N idle WebSocket connections, RSS per connection."""
    proc, port = start(kind)
    socks = []
    try:
        time.sleep(0.5)
        before = settle(proc.pid)
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(handshake())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            if kind == "broker":
                hello = {"t": "hello", "user": f"idle-{i}", "device": "d"}
                s.sendall(ws_frame(json.dumps(hello).encode()))
                got = head.partition(b"\r\n\r\n")[2]
                while b"welcome" not in got:
                    got += s.recv(4096)
            socks.append(s)
        after = settle(proc.pid)
        return (after - before) / n
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle", type=int, default=2000, help="idle connections (0: skip)")
    args = p.parse_args()
    raise_nofile(20_000)
    if args.idle:
        bare = idle_memory("bare", args.idle)
        broker = idle_memory("broker", args.idle)
        print(f"bare Autobahn, idle       {bare / 1024:6.2f} KiB per connection", flush=True)
        print(f"broker, idle after hello  {broker / 1024:6.2f} KiB per connection", flush=True)
    if not args.rounds:
        return
    d = defer.ensureDeferred(relay(args))
    d.addErrback(lambda f: print(f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    main()
