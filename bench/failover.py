"""Failover of routed clients: one node of three killed with SIGKILL, its clients on their standbys.

    .venv/bin/python bench/failover.py [--clients 1000] [--procs 2] [--heartbeat 2] [--runs 1]

Three `twistd -n o2obroker` nodes share one redis-server started here. The
clients are ``RoutedClient`` devices (binary TCP, o2obroker/client/routed.py),
spread over ``--procs`` client processes, each routed by a key of its own with
``/api/v1/route`` onto a node and its standby. Once every client is welcomed,
node n3 is killed with SIGKILL; each of its clients goes to the standby its
look-up named and says hello there again (resuming its inbox). Measured per
client of n3: from the kill to its welcome on the standby (wall clock, one
machine), p50, p90 and max, and whether the new node is the key's standby.

The baseline, in the same run: the first connection of the same clients,
from the moment their process starts connecting to each one's welcome (a
look-up, a connect and a hello each, all at once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import PYTHON, ROOT, free_port, raise_nofile, start_broker

sys.path.insert(0, str(ROOT))

NODES = ("n1", "n2", "n3")
VICTIM = "n3"


def start_node(
    name: str, redis_url: str, heartbeat: float, workdir: str, backlog: int
) -> dict[str, Any]:
    tcp, http = free_port(), free_port()
    config = os.path.join(workdir, f"{name}.ini")
    with open(config, "w") as f:
        f.write(f"[broker]\nnode_heartbeat = {heartbeat}\n")
    proc = start_broker(
        tcp,
        *("--config", config, "--node", name, "--redis", redis_url),
        http=http,
        backlog=backlog,
    )
    return {"name": name, "proc": proc, "tcp": tcp, "http": f"http://127.0.0.1:{http}"}


def registry_lists_all(lookup: str, want: int) -> None:
    """Blocking wait (set-up only) until the route look-up sees every node."""
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{lookup}/healthz", timeout=5) as r:
            r.read()
        seen = set()
        for i in range(200):
            with urllib.request.urlopen(f"{lookup}/api/v1/route?key=probe-{i}", timeout=5) as r:
                seen.add(json.loads(r.read())["node"]["id"])
        if len(seen) == want:
            return
        time.sleep(0.2)
    raise RuntimeError("the registry never listed every node")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    from tests.redis_server import RedisServer

    redis = RedisServer()
    redis.start()
    workdir = tempfile.mkdtemp(prefix="o2o-failover-")
    nodes = [start_node(n, redis.url, args.heartbeat, workdir, args.backlog) for n in NODES]
    workers: list[subprocess.Popen[str]] = []
    try:
        lookups = [n["http"] for n in nodes]
        registry_lists_all(lookups[0], len(nodes))
        share = args.clients // args.procs
        for w in range(args.procs):
            count = share if w < args.procs - 1 else args.clients - share * (args.procs - 1)
            workers.append(
                subprocess.Popen(
                    [PYTHON, __file__, "--worker", str(w), "--count", str(count), *lookups],
                    cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=str(ROOT)),
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=lambda: raise_nofile(),
                )
            )
        first: list[float] = []
        on_victim = 0
        for worker in workers:
            assert worker.stdout is not None
            ready = json.loads(worker.stdout.readline())
            first += ready["first"]
            on_victim += ready["victim"]
        victim = nodes[NODES.index(VICTIM)]
        killed = time.time()
        victim["proc"].kill()
        victim["proc"].wait()
        moved: list[dict[str, Any]] = []
        for worker in workers:
            assert worker.stdout is not None
            moved += json.loads(worker.stdout.readline())["moved"]
            worker.wait(30)
        delays = [m["at"] - killed for m in moved if m["at"] is not None]
        return {
            "first": first,
            "on_victim": on_victim,
            "moved": len(delays),
            "to_standby": sum(1 for m in moved if m["standby"]),
            "delays": delays,
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for node in nodes:
            if node["proc"].poll() is None:
                node["proc"].terminate()
                node["proc"].wait(15)
        redis.destroy()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument(
        "--heartbeat", type=float, default=2.0, help="node_heartbeat (registry TTL: 2 of them)"
    )
    p.add_argument("--runs", type=int, default=1)
    p.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="listen backlog of the nodes' binary port (default: a node's own, 1024;"
        " 50 is Twisted's)",
    )
    p.add_argument("--wait", type=float, default=60.0, help="seconds a client may take to move")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("lookups", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        from twisted.internet.task import react

        react(lambda reactor: worker(reactor, args))
        return
    print(
        f"{args.clients} routed binary clients in {args.procs} processes, nodes {', '.join(NODES)}"
        f" on one Redis, node_heartbeat {args.heartbeat} s (registry TTL"
        f" {2 * args.heartbeat:g} s), binary port backlog {args.backlog or 1024};"
        f" {VICTIM} killed with SIGKILL"
    )
    for run in range(args.runs):
        r = run_once(args)
        first, delays = r["first"], r["delays"]
        print(f"run {run + 1}:")
        print(
            f"  baseline, first connection of all {len(first)}: p50 {ms(statistics.median(first))},"
            f" p90 {ms(percentile(first, 90))}, max {ms(max(first))}"
        )
        if not delays:
            print("  no client of the killed node moved")
            continue
        print(
            f"  failover, {r['moved']} of {r['on_victim']} clients of {VICTIM} welcomed again:"
            f" p50 {ms(statistics.median(delays))}, p90 {ms(percentile(delays, 90))},"
            f" max {ms(max(delays))}; on the key's standby: {r['to_standby']}"
        )


# -- the client processes ---------------------------------------------------------------


async def _worker(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet.defer import gatherResults
    from twisted.internet.task import deferLater

    from o2obroker.client.routed import RoutedClient
    from o2obroker.routing.directory import NodeInfo, rank

    class Timed(RoutedClient):
        """Notes the wall-clock time of every welcome and the node it came from."""

        welcomes: list[tuple[float, str | None]]

        def _welcomed(self, welcome: dict[str, Any]) -> dict[str, Any]:
            self.welcomes.append((time.time(), welcome.get("node")))
            return super()._welcomed(welcome)

    nodes = [NodeInfo(n) for n in NODES]
    clients = []
    for i in range(args.count):
        key = f"w{args.worker}-k{i}"
        lookups = args.lookups[i % len(args.lookups) :] + args.lookups[: i % len(args.lookups)]
        c = Timed(reactor, lookups, key=key, hello={"user": key, "device": "phone"})
        c.welcomes = []
        clients.append(c)
    started = time.time()
    await gatherResults([c.start() for c in clients])
    victims = [c for c in clients if c.welcomes[0][1] == VICTIM]
    print(
        json.dumps(
            {"first": [c.welcomes[0][0] - started for c in clients], "victim": len(victims)}
        ),
        flush=True,
    )
    deadline = time.monotonic() + args.wait
    while any(len(c.welcomes) < 2 for c in victims) and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    moved = []
    for c in victims:
        at, node = c.welcomes[1] if len(c.welcomes) > 1 else (None, None)
        assert c.key is not None
        standby = next(n.id for n in rank(c.key, nodes) if n.id != VICTIM)
        moved.append({"at": at, "node": node, "standby": node == standby})
    print(json.dumps({"moved": moved}), flush=True)
    await gatherResults([c.stop() for c in clients], consumeErrors=True)


def worker(reactor: Any, args: argparse.Namespace) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(_worker(reactor, args))


if __name__ == "__main__":
    main()
