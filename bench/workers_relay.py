"""1:1 relay through one node of 2 workers, against the same node as 1 process.

    .venv/bin/python bench/workers_relay.py [--pairs 8] [--messages 20000] [--batch 200]
                                            [--window 8] [--rounds 2] [--workers 2]

In one run, on one redis-server started here, alternately: a node of one
process on Redis (the baseline), and the same node with ``--workers``.
``--pairs`` sender/receiver pairs of fresh users connect to the node's one
TCP port (with workers, the kernel picks a worker for each connection, so
some pairs meet on one worker and the others cross through Redis) and all
relay at once, each as bench/cluster_relay.py drives one pair (pre-encoded
batches, at most ``--window`` in flight, the receiver acknowledges). The
figure is all messages delivered over the wall time. The driver shares the
machine's cores with the node.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request

import cbor2
from _common import ROOT, drive, free_port, start_broker
from tcp_relay import Counter, frame, send_batches
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer


def listed(http: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/nodes", timeout=5) as r:
            return len(json.loads(r.read())["nodes"])
    except OSError:
        return 0


def start(redis: RedisServer, workers: int) -> tuple[int, object]:
    port, http = free_port(), free_port()
    proc = start_broker(port, "--redis", redis.url, "--workers", str(workers), http=http)
    for _ in range(300):  # every worker connected and in the registry
        if listed(http) == workers:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # their subscriber connections come up
    return port, proc


async def one_pair(
    port: int, prefix: str, n_batches: int, batch: int, window: int, crossed: list[bool]
) -> float:
    """bench/cluster_relay.py's throughput, noting whether the pair met on one worker."""
    receiver = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port), Counter(ack=True, welcome=True)
    )
    sender = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port), Counter(welcome=True)
    )
    bob = f"{prefix}bob"
    receiver.transport.write(frame({"t": "hello", "user": bob, "device": "r"}))
    sender.transport.write(frame({"t": "hello", "user": f"{prefix}alice", "device": "s"}))
    nodes = [cbor2.loads(await c.first)["node"] for c in (receiver, sender)]
    crossed.append(nodes[0] != nodes[1])
    batches = send_batches(bob, n_batches, batch)
    return await drive(sender, receiver, batches, batch, window, n_batches * batch)


async def relay(
    port: int, prefix: str, pairs: int, n_batches: int, batch: int, window: int
) -> tuple[float, int]:
    """(messages per second over all pairs, how many pairs crossed between workers)."""
    crossed: list[bool] = []
    start = time.perf_counter()
    await defer.gatherResults(
        [
            defer.ensureDeferred(
                one_pair(port, f"{prefix}p{i}-", n_batches, batch, window, crossed)
            )
            for i in range(pairs)
        ]
    )
    return pairs * n_batches * batch / (time.perf_counter() - start), sum(crossed)


async def main(args: argparse.Namespace) -> None:
    n_batches = args.messages // args.batch
    redis = RedisServer()
    redis.start()
    cases = (1, args.workers)
    rates: dict[int, list[float]] = {c: [] for c in cases}
    try:
        for rnd in range(args.rounds):
            for workers in cases:
                port, proc = start(redis, workers)
                try:
                    rate, crossed = await relay(
                        port, f"w{workers}r{rnd}-", args.pairs, n_batches, args.batch, args.window
                    )
                finally:
                    proc.terminate()  # type: ignore[attr-defined]
                    proc.wait()  # type: ignore[attr-defined]
                rates[workers].append(rate)
                print(
                    f"round {rnd + 1} workers={workers} {rate:10,.0f} msgs/s"
                    f" ({crossed} of {args.pairs} pairs across two workers)",
                    flush=True,
                )
    finally:
        redis.destroy()
    base = statistics.median(rates[1])
    print(f"{'workers':>7s} {'msgs/s':>10s} {'x 1':>6s}")
    for workers in cases:
        rate = statistics.median(rates[workers])
        print(f"{workers:7d} {rate:10,.0f} {rate / base:6.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--messages", type=int, default=20_000, help="per pair")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    defer.ensureDeferred(main(args)).addBoth(lambda r: (print(r) if r else None, reactor.stop()))
    reactor.run()
