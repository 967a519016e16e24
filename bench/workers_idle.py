"""Idle binary connections held by one node of N workers, against one process.

    .venv/bin/python bench/workers_idle.py [--connections 60000] [--workers 4]
                                           [--single 15000] [--clients 4]

In one run, on one redis-server started here: first a node of one process
(``--redis``, no workers) takes ``--single`` connections, then a node of
``--workers`` worker processes takes ``--connections``. Every connection says
hello as its own user and waits for its welcome. The clients are ``--clients``
processes (the per-process open-file limit is 20,000 here), each bound to its
own source address 127.0.0.k (loopback has ~28,000 ephemeral ports per source
and destination pair), each with at most 250 connects under way; a hello the
broker refuses (503 when its Redis calls time out, 401 when it could not
read the hello in time: both under overload) is tried again a second later,
as a client would, and counted. The connect storm is timed from the moment
every client process is ready to the last welcome. Memory per connection is
the growth of the RSS summed over the node's processes, divided by the
connections. ``hb`` is 600 s so that no heartbeat probe runs meanwhile (the
clients answer none).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
import urllib.request

import psutil
from _common import PYTHON, ROOT, free_port, raise_nofile, settle, start_broker

sys.path.insert(0, str(ROOT))

_len = struct.Struct(">I")
IN_FLIGHT = 250


# -- a client process -------------------------------------------------------------


def client(port: int, source: str, count: int, prefix: str) -> None:
    """Open ``count`` connections from ``source``; say "ready", wait for "go" on
    stdin, connect them all, say "done <failures>", hold them until stdin closes."""
    import cbor2
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import ClientFactory, Protocol
    from twisted.protocols.basic import LineReceiver

    state = {"started": 0, "welcomed": 0, "failed": 0}
    refused: dict[str, int] = {}

    def hello(user: str) -> bytes:
        payload = cbor2.dumps({"t": "hello", "user": user, "device": "d"})
        return _len.pack(len(payload)) + payload

    class Idle(Protocol):
        def __init__(self, user: str) -> None:
            self.user = user
            self.buf = b""
            self.welcomed = False

        def connectionMade(self) -> None:
            self.transport.write(hello(self.user))

        def dataReceived(self, data: bytes) -> None:
            if self.welcomed:
                return
            self.buf += data
            if len(self.buf) >= 4 and len(self.buf) >= 4 + _len.unpack_from(self.buf)[0]:
                self.welcomed = True
                first = cbor2.loads(self.buf[4 : 4 + _len.unpack_from(self.buf)[0]])
                self.buf = b""
                if first.get("t") == "welcome":
                    state["welcomed"] += 1
                    more()
                    return
                # refused (the broker closes it): again in a second, as a client would
                code = f"{first.get('code')} {first.get('reason')}"
                refused[code] = refused.get(code, 0) + 1
                reactor.callLater(1.0, dial, self.user)

    class Factory(ClientFactory):
        def __init__(self, user: str) -> None:
            self.user = user

        def buildProtocol(self, addr: object) -> Idle:
            return Idle(self.user)

        def clientConnectionFailed(self, connector: object, reason: object) -> None:
            state["failed"] += 1
            more()

    def dial(user: str) -> None:
        reactor.connectTCP("127.0.0.1", port, Factory(user), timeout=60, bindAddress=(source, 0))

    def more() -> None:
        while state["started"] < count and (
            state["started"] - state["welcomed"] - state["failed"] < IN_FLIGHT
        ):
            state["started"] += 1
            dial(f"{prefix}{state['started']}")
        if state["welcomed"] + state["failed"] == count:
            out.sendLine(f"done {state['failed']} {json.dumps(refused)}".encode())

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line == b"go":
                more()

        def connectionLost(self, reason: object) -> None:
            reactor.stop()

    out = Control()
    stdio.StandardIO(out)
    out.sendLine(b"ready")
    reactor.run()


# -- the run ----------------------------------------------------------------------


def start_node(redis_url: str, workers: int) -> tuple[subprocess.Popen[bytes], int, int]:
    tcp, http = free_port(), free_port()
    proc = start_broker(
        tcp,
        *("--redis", redis_url, "--hb", "600", "--workers", str(workers)),
        http=http,
        backlog=4096,
    )
    return proc, tcp, http


def nodes(http: int) -> list[dict]:
    """The registry's live records ([] while it cannot be read: Redis not yet up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/nodes", timeout=10) as r:
            return list(json.loads(r.read())["nodes"])
    except OSError:
        return []


def node_pids(proc: subprocess.Popen[bytes], workers: int) -> list[int]:
    """The processes that hold the connections: the workers, or the node itself."""
    if workers == 1:
        return [proc.pid]
    kids: list[psutil.Process] = []
    for _ in range(100):
        kids = psutil.Process(proc.pid).children()
        if len(kids) == workers:
            break
        time.sleep(0.1)
    return [proc.pid, *(k.pid for k in kids)]


def run(redis_url: str, workers: int, total: int, clients: int) -> tuple[float, float, dict]:
    """(seconds of the connect storm, bytes per connection, connections by node id)."""
    proc, tcp, http = start_node(redis_url, workers)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(300):  # every worker in the registry
            if len(nodes(http)) == workers:
                break
            time.sleep(0.1)
        pids = node_pids(proc, workers)
        time.sleep(1.0)
        before = sum(settle(pid) for pid in pids)
        share = total // clients
        for k in range(clients):
            procs.append(
                subprocess.Popen(
                    [
                        PYTHON,
                        __file__,
                        "--client",
                        str(tcp),
                        f"127.0.0.{k + 2}",
                        str(share),
                        f"w{workers}c{k}-",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    preexec_fn=lambda: raise_nofile(),
                )
            )
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        failed, why = 0, {}
        for p in procs:
            assert p.stdout is not None
            _, n, refused = p.stdout.readline().decode().split(" ", 2)
            failed += int(n)
            for reason, k in json.loads(refused).items():
                why[reason] = why.get(reason, 0) + k
        storm = time.perf_counter() - start
        if failed or why:
            print(f"  {failed} connects failed; hellos refused, then retried: {why}", flush=True)
        after = sum(settle(pid) for pid in pids)
        held = share * clients - failed
        time.sleep(2 * 2.0)  # a heartbeat of the registry: the records count them
        spread = {n["id"]: sum(n["connections"].values()) for n in nodes(http)}
        return storm, (after - before) / held, spread
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            p.wait()
        proc.terminate()
        proc.wait()


def main() -> None:
    from tests.redis_server import RedisServer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=60_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--single", type=int, default=15_000)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()
    raise_nofile(20_000)
    redis = RedisServer()
    redis.start()
    try:
        rows = []
        for workers, n, clients in (
            (1, args.single, max(1, args.single // 15_000)),
            (args.workers, args.connections, args.clients),
        ):
            storm, per, spread = run(redis.url, workers, n, clients)
            held = sum(spread.values())
            print(
                f"workers={workers} connections={held:,} storm={storm:.1f} s"
                f" ({held / storm:,.0f}/s) {per / 1024:.2f} KiB per connection",
                f" by worker: {spread}",
                flush=True,
            )
            rows.append((workers, held, storm, per))
    finally:
        redis.destroy()
    base = rows[0][3]
    print(
        f"{'processes':>9s} {'connections':>11s} {'storm s':>8s} {'KiB/conn':>9s} {'x single':>8s}"
    )
    for workers, held, storm, per in rows:
        print(f"{workers:9d} {held:11,d} {storm:8.1f} {per / 1024:9.2f} {per / base:8.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
