"""1:1 relay throughput over binary TCP: the broker's full path against a bare relay.

    .venv/bin/python bench/tcp_relay.py [--messages 200000] [--batch 500] [--window 32] [--rounds 3]

In the same run, alternately: (a) bench/bare_relay.py, which does what any
relay of this protocol must (decode each send to find its recipient, encode a
msg with a seq and a receipt, write both) and nothing else, and (b) a real
broker (`twistd -n o2obroker`, embedded backend), where every message goes
hello, send, receipt, msg, ack: decoded, validated, deduplicated by id, stored
in the inbox with a seq, encoded, written, answered with a receipt,
acknowledged. One client process drives both with the same pre-encoded
batches, keeping at most ``--window`` batches in flight, and counts frames
without decoding them so that it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import struct

import cbor2
from _common import drive, free_port, start_broker, start_script
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

_len = struct.Struct(">I")


def frame(obj: dict) -> bytes:
    payload = cbor2.dumps(obj)
    return _len.pack(len(payload)) + payload


def send_batches(to: str, n_batches: int, batch: int, prefix: str = "") -> list[bytes]:
    """``n_batches`` pre-encoded runs of ``batch`` sends to ``to``, ids unique per prefix."""
    return [
        b"".join(
            frame({"t": "send", "id": f"{prefix}{b}-{i}", "to": to, "body": {"n": i}})
            for i in range(batch)
        )
        for b in range(n_batches)
    ]


class Counter(Protocol):
    """Counts whole frames; optionally acknowledges them cumulatively."""

    def __init__(self, ack: bool = False, welcome: bool = False) -> None:
        self.count = 0
        self.welcome = welcome  # the first frame is a welcome: hand it over, don't count it
        self.buf = b""
        self.ack = ack
        self.first: defer.Deferred[bytes] = defer.Deferred()
        self.on_count = lambda: None

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end, n = 0, len(buf), 0
        if self.welcome and not self.first.called:
            (size,) = _len.unpack_from(buf, 0)
            if end < 4 + size:
                self.buf = buf
                return
            self.first.callback(buf[4 : 4 + size])
            pos = 4 + size
        while end - pos >= 4:
            (size,) = _len.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            pos += 4 + size
            n += 1
        self.buf = buf[pos:]
        if n:
            self.count += n
            if self.ack:
                # a fresh user's seqs are 1, 2, 3...: the count is the last seq
                self.transport.write(frame({"t": "ack", "seq": self.count}))
            self.on_count()


async def run_once(port: int, broker: bool, batches: list[bytes], batch: int, window: int) -> float:
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    receiver = await connectProtocol(ep, Counter(ack=True, welcome=True))
    sender = await connectProtocol(ep, Counter(welcome=True))
    receiver.transport.write(frame({"t": "hello", "user": "bob", "device": "r"}))
    sender.transport.write(frame({"t": "hello", "user": "alice", "device": "s"}))
    await receiver.first
    await sender.first
    return await drive(sender, receiver, batches, batch, window, len(batches) * batch)


async def main(args: argparse.Namespace) -> None:
    n_batches = args.messages // args.batch
    results: dict[str, list[float]] = {"bare": [], "broker": []}
    kinds = ("bare", "broker") if args.port is None else ("broker",)
    for rnd in range(args.rounds):
        for kind in kinds:
            if args.port is not None:  # a broker started by hand, e.g. under a profiler
                port, proc = args.port, None
            else:
                port = free_port()
                proc = (
                    start_script("bare_relay.py", str(port))
                    if kind == "bare"
                    else start_broker(port)
                )
            try:
                from _common import wait_port

                wait_port(port)
                prefix = f"r{rnd}-"
                batches = send_batches("bob", n_batches, args.batch, prefix)
                rate = await run_once(port, kind == "broker", batches, args.batch, args.window)
                results[kind].append(rate)
                print(f"round {rnd + 1} {kind:6s} {rate:10,.0f} msgs/s", flush=True)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait()
    if args.port is not None:
        return
    bare, brk = statistics.median(results["bare"]), statistics.median(results["broker"])
    print(f"median bare relay   {bare:10,.0f} msgs/s")
    print(f"median broker       {brk:10,.0f} msgs/s")
    print(f"broker / bare       {brk / bare:10.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, help="drive a broker already listening here")
    args = p.parse_args()
    defer.ensureDeferred(main(args)).addBoth(lambda r: (print(r) if r else None, reactor.stop()))
    reactor.run()
