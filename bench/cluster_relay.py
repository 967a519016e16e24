"""1:1 relay across nodes: the memory backend, Redis on one node, Redis across two nodes.

    .venv/bin/python bench/cluster_relay.py [--messages 50000] [--batch 500] [--window 32]
                                            [--rounds 2] [--pings 300]

In one run, side by side, each case with fresh `twistd -n o2obroker` processes:

- ``memory``: sender and receiver on one node, embedded backend (the baseline);
- ``redis-1``: both on one node with ``--redis`` (a redis-server started here);
- ``redis-2``: the sender on one node, the receiver on another, one Redis.

Throughput is driven as bench/tcp_relay.py drives it (pre-encoded batches,
at most ``--window`` in flight, frames counted, not decoded; the receiver
acknowledges). Latency is measured apart, unloaded: one send at a time, from
writing it to the receiver getting its msg, ``--pings`` times. Redis round
trips per message are the commands the nodes sent to Redis over the
throughput run (``o2o_redis_commands_total`` of their /metrics; a script is
one, heartbeats and pings count too), divided by the messages. CPU per
message is each process's user and system time over the throughput run
(psutil), divided by the messages: where the cost is, whatever else the
machine runs meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request

import psutil
from _common import ROOT, drive, free_port, start_broker
from tcp_relay import Counter, frame, send_batches
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer


def redis_calls(http_ports: list[int]) -> int:
    """Commands the nodes sent to Redis (a script is one), from their /metrics
    (between the timed runs only: a blocking read)."""
    total = 0
    for port in http_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("o2o_redis_commands_total{"):
                    total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def pair(send_port: int, recv_port: int, prefix: str) -> tuple[Counter, Counter]:
    """A sender and a receiver, fresh users of their own (``prefix``) on one Redis."""
    receiver = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", recv_port), Counter(ack=True, welcome=True)
    )
    sender = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", send_port), Counter(welcome=True)
    )
    receiver.transport.write(frame({"t": "hello", "user": f"{prefix}bob", "device": "r"}))
    await receiver.first
    sender.transport.write(frame({"t": "hello", "user": f"{prefix}alice", "device": "s"}))
    await sender.first
    return sender, receiver


async def throughput(
    send_port: int, recv_port: int, prefix: str, n_batches: int, batch: int, window: int
) -> float:
    sender, receiver = await pair(send_port, recv_port, prefix)
    bob = f"{prefix}bob"
    batches = send_batches(bob, n_batches, batch)
    return await drive(sender, receiver, batches, batch, window, n_batches * batch)


async def latency(send_port: int, recv_port: int, prefix: str, pings: int) -> list[float]:
    prefix += "lat-"
    sender, receiver = await pair(send_port, recv_port, prefix)
    bob = f"{prefix}bob"
    out = []
    for i in range(pings):
        arrived: defer.Deferred[None] = defer.Deferred()
        want = receiver.count + 1

        def check(d: defer.Deferred[None] = arrived, want: int = want) -> None:
            if receiver.count >= want and not d.called:
                d.callback(None)

        receiver.on_count = check
        start = time.perf_counter()
        sender.transport.write(frame({"t": "send", "id": f"p{i}", "to": bob, "body": i}))
        await arrived
        out.append((time.perf_counter() - start) * 1000)
    sender.transport.loseConnection()
    receiver.transport.loseConnection()
    return out


def start_case(case: str, redis: RedisServer) -> tuple[int, int, list[int], list]:
    """The case's node processes: (sender's port, receiver's port, HTTP ports, processes)."""
    http = [free_port()]
    if case == "memory":
        port = free_port()
        return port, port, http, [start_broker(port, http=http[0])]
    extra = ("--redis", redis.url)
    a = free_port()
    procs = [start_broker(a, *extra, "--node", "a", http=http[0])]
    b = a
    if case == "redis-2":
        b = free_port()
        http.append(free_port())
        procs.append(start_broker(b, *extra, "--node", "b", http=http[1]))
    time.sleep(1.0)  # set-up: the nodes' subscriber connections come up
    return a, b, http, procs


async def main(args: argparse.Namespace) -> None:
    n_batches = args.messages // args.batch
    redis = RedisServer()
    redis.start()
    cases = tuple(args.cases.split(","))
    rates: dict[str, list[float]] = {c: [] for c in cases}
    lat: dict[str, list[float]] = {c: [] for c in cases}
    trips: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[list[float]]] = {c: [] for c in cases}
    try:
        for rnd in range(args.rounds):
            for case in cases:
                send_port, recv_port, http, procs = start_case(case, redis)
                # sender's node, receiver's node (the same one but on redis-2), Redis
                watched = [psutil.Process(p.pid) for p in procs]
                if case != "memory":
                    watched.append(psutil.Process(redis.process.pid))
                try:
                    before = redis_calls(http)
                    cpu_before = [cpu_seconds(p) for p in watched]
                    rate = await throughput(
                        send_port, recv_port, f"{case}-r{rnd}-", n_batches, args.batch, args.window
                    )
                    cpu_used = [
                        cpu_seconds(p) - c for p, c in zip(watched, cpu_before, strict=True)
                    ]
                    used = redis_calls(http) - before
                    n = n_batches * args.batch
                    trips[case].append(used / n)
                    rates[case].append(rate)
                    cpu[case].append([c / n * 1e6 for c in cpu_used])
                    lat[case] += await latency(send_port, recv_port, f"{case}-r{rnd}-", args.pings)
                    print(
                        f"round {rnd + 1} {case:8s} {rate:10,.0f} msgs/s",
                        f" {trips[case][-1]:.4f} redis round trips/msg",
                        " CPU us/msg " + " + ".join(f"{c:.1f}" for c in cpu[case][-1]),
                        flush=True,
                    )
                finally:
                    for p in procs:
                        p.terminate()
                        p.wait()
    finally:
        redis.destroy()
    base = statistics.median(rates[cases[0]])
    print(
        f"{'case':8s} {'msgs/s':>10s} {'x memory':>9s}",
        f"{'p50 ms':>7s} {'p99 ms':>7s} {'trips/msg':>9s}",
        " CPU us/msg (nodes + redis)",
    )
    for case in cases:
        rate = statistics.median(rates[case])
        q = statistics.quantiles(lat[case], n=100)
        per = [statistics.median(c) for c in zip(*cpu[case], strict=True)]
        print(
            f"{case:8s} {rate:10,.0f} {rate / base:9.2f} {q[49]:7.2f} {q[98]:7.2f}"
            f" {statistics.median(trips[case]):9.4f}",
            f" {' + '.join(f'{c:.1f}' for c in per)} = {sum(per):.1f}",
        )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pings", type=int, default=300)
    p.add_argument("--cases", default="memory,redis-1,redis-2")
    args = p.parse_args()
    defer.ensureDeferred(main(args)).addBoth(lambda r: (print(r) if r else None, reactor.stop()))
    reactor.run()
