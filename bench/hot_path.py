"""CPU cost of one message through the broker's whole path, without sockets.

    .venv/bin/python bench/hot_path.py [--messages 100000] [--batch 500]

A node on a fake clock with two binary connections on StringTransports: the
sender's bytes go through the transport, session, both user actors, the
inbox, and back out as msg and receipt bytes; the receiver acks each batch.
No kernel, no other process: the figure is the broker's own work per
message, and stays put on a noisy machine. Each setting runs in a child
process of its own (the collector's settings are process-wide): CPython's
default collector thresholds against the ones a node sets when it starts
(o2obroker.service.tap.tune_gc).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

import cbor2
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.tap import tune_gc
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import frame


def connect(factory: BinaryFactory, clock: Clock, user: str) -> tuple[object, StringTransport]:
    transport = StringTransport()
    proto = factory.buildProtocol(None)
    proto.makeConnection(transport)
    proto.dataReceived(frame(cbor2.dumps({"t": "hello", "user": user, "device": "d"})))
    clock.advance(0)
    transport.clear()
    return proto, transport


def measure(messages: int, batch: int, rounds: int) -> float:
    clock = Clock()
    node = Node(Config(auth="none"), clock)
    factory = BinaryFactory(node.gateway)
    sender, sent = connect(factory, clock, "alice")
    receiver, received = connect(factory, clock, "bob")
    seq = 0
    best = float("inf")
    for r in range(rounds + 1):  # the first round warms up
        batches = [
            b"".join(
                frame(
                    cbor2.dumps({"t": "send", "id": f"{r}.{b}.{i}", "to": "bob", "body": {"n": i}})
                )
                for i in range(batch)
            )
            for b in range(messages // batch)
        ]
        start = time.perf_counter()
        for data in batches:
            sender.dataReceived(data)
            clock.advance(0)
            seq += batch
            receiver.dataReceived(frame(cbor2.dumps({"t": "ack", "seq": seq})))
            clock.advance(0)
            sent.clear()
            received.clear()
        elapsed = time.perf_counter() - start
        if r:
            best = min(best, elapsed / (len(batches) * batch) * 1e6)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gc", choices=["default", "tuned"], help="(child) run one setting")
    args = p.parse_args()
    if args.gc:
        if args.gc == "tuned":
            tune_gc()
        print(f"{measure(args.messages, args.batch, args.rounds):.2f}")
        return
    figures = {}
    for setting in ("default", "tuned"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--gc",
                setting,
                "--messages",
                str(args.messages),
                "--batch",
                str(args.batch),
                "--rounds",
                str(args.rounds),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        figures[setting] = float(out)
        print(
            f"gc {setting:8s} {figures[setting]:6.2f} us per message "
            f"({1e6 / figures[setting]:,.0f} msgs/s of one core)",
            flush=True,
        )
    print(f"tuned / default  {figures['tuned'] / figures['default']:6.2f}")


if __name__ == "__main__":
    gc.collect()
    main()
