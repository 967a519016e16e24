"""A node of two worker processes: a real ``twistd o2obroker --workers 2`` on a real Redis.

Clients connect to the node's one TCP port and HTTP port and land on either
worker (the kernel's choice); what holds across a node holds across its
workers: messages, presence, long-poll sessions polled through the other
worker. The parent restarts a worker killed with SIGKILL, stops them all on
SIGTERM, and workers stop by themselves when the parent is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client import connect
from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.console.test_console import _telnet_client
from tests.redis_server import RedisServer, free_port

WORKERS = ["n1.w0", "n1.w1"]


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc; zombies are not alive)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")"
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            out.add(int(entry))
    return out


def free_pair() -> int:
    """A port p with p + 1 free too."""
    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two free ports in a row")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class WorkerNode(BrokerProcess):
    """``twistd o2obroker --workers N``: the parent; its workers are its children."""

    def __init__(self, name: str, redis_url: str, workers: int = 2) -> None:
        super().__init__(name, redis_url)
        self.args += ["--workers", str(workers)]
        # a telnet console, on the configured port + i for worker i
        self.console_port = free_pair()
        passwd = os.path.join(self.dir, "passwd")
        with open(passwd, "w") as f:
            f.write("ops:staple\n")
        with open(self.config, "a") as f:
            f.write(f"manhole_telnet = tcp:{self.console_port}:interface=127.0.0.1\n")
            f.write(f"manhole_passwd = {passwd}\n")

    @property
    def pid(self) -> int:
        return int(self._transport.pid)

    async def nodes(self) -> dict[str, Any]:
        r = await treq.get(
            f"{self.http}/api/v1/nodes", headers={"Authorization": "Bearer k"}, persistent=False
        )
        return dict(json.loads(await r.content()))

    async def records(self, wanted: list[str], within: float = 30) -> dict[str, dict[str, Any]]:
        """The registry records, once it lists exactly ``wanted`` (through either worker)."""
        for _ in range(int(within * 10)):
            try:
                listed = await self.nodes()
            except ConnectionError:
                listed = {"nodes": []}
            records = {r["id"]: r for r in listed["nodes"]}
            if sorted(records) == wanted:
                return records
            await deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"registry never listed {wanted}: {sorted(records)}")


class WorkersTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        self.node = WorkerNode("n1", self.redis.url)
        self.addCleanup(self.node.destroy)
        await self.node.start()  # one worker is connected to Redis
        self.records = await self.node.records(WORKERS)
        self.open: list[Any] = []  # the clients connected

    async def client(self, user: str, device: str = "d") -> Any:
        c = await connect(reactor, self.node.tcp, token=make_token(SECRET, user), device=device)
        self.addCleanup(lambda: c.transport and c.transport.abortConnection())
        c.node = (await c.welcome)["node"]  # the worker that took it
        c.user = user
        self.open.append(c)
        return c

    async def on_each_worker(self, prefix: str) -> dict[str, Any]:
        """Clients of users ``prefix0``, ``prefix1``, ... until one has landed on each
        worker: worker id -> that client (the others stay connected)."""
        found: dict[str, Any] = {}
        for i in range(200):
            c = await self.client(f"{prefix}{i}")
            found.setdefault(c.node, c)
            if len(found) == len(WORKERS):
                return found
        raise AssertionError(f"200 clients all landed on {list(found)}")

    async def lp(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        r = await treq.request(method, url, data=data, persistent=False)
        return r.code, json.loads(await r.content())

    async def test_clients_messages_presence_and_long_poll_across_workers(self) -> None:
        # each worker: a node of its own with the node's shared ports and its own http
        for wid, record in self.records.items():
            self.assertEqual(record["worker"], {"node": "n1", "index": int(wid[-1]), "count": 2})
            self.assertEqual(record["addresses"]["tcp"], f"127.0.0.1:{self.node.tcp_port}")
            self.assertEqual(record["addresses"]["ws"], f"ws://127.0.0.1:{self.node.http_port}/ws")
        internal = {wid: r["addresses"]["http"] for wid, r in self.records.items()}
        self.assertEqual(len(set(internal.values())), 2)
        self.assertNotIn(f":{self.node.http_port}", " ".join(internal.values()))

        # clients on the one shared port land on both workers
        watchers = await self.on_each_worker("w")
        w0, w1 = watchers["n1.w0"], watchers["n1.w1"]
        # a message between users on different workers
        got = w1.next_message()
        receipt = await w0.send({"hi": 1}, to=w1.user)
        self.assertEqual(receipt["status"], "delivered")
        msg = await got
        self.assertEqual((msg["body"], msg["mid"]), ({"hi": 1}, receipt["mid"]))

        # presence: a user coming online on the other worker reaches its watcher
        first = w0.wait_for("presence")
        w0.write_frame({"t": "watch", "users": [f"p{i}" for i in range(40)]})
        await first
        for i in range(40):
            c = await self.client(f"p{i}")
            if c.node == "n1.w1":
                break
            c.transport.abortConnection()
            self.open.remove(c)
        user = f"p{i}"
        await eventually(
            lambda: any(
                f.get("t") == "presence" and f.get("user") == user and f.get("state") == "online"
                for f in w0.frames
            )
        )

        # the node's totals: both workers summed (records are a heartbeat old)
        async def totals() -> dict[str, Any]:
            return dict((await self.node.nodes())["totals"]["n1"])

        for _ in range(50):
            t = await totals()
            if t["connections"].get("tcp", 0) >= 3:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual((t["workers"], t["count"]), (2, 2))
        self.assertGreaterEqual(t["connections"]["tcp"], 3)

        # each worker's metrics at its own http address: its own connections
        async def gauge(base: str) -> str:
            r = await treq.get(f"{base}/metrics", persistent=False)
            for line in (await r.content()).decode().splitlines():
                if line.startswith('o2o_connections{transport="tcp"}'):
                    return line
            return ""

        for wid, base in internal.items():
            line = ""
            for _ in range(50):  # a connection aborted above may still be closing
                mine = sum(1 for c in self.open if c.node == wid)
                line = await gauge(base)
                if line == f'o2o_connections{{transport="tcp"}} {float(mine)}':
                    break
                await deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(line, f'o2o_connections{{transport="tcp"}} {float(mine)}')

        # each worker's console on the configured port + its index
        for i in (0, 1):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.console_port + i)
            transport = await endpoint.connect(_telnet_client())
            self.addCleanup(transport.loseConnection)
            console = transport.protocol
            await console.wait_for(b"Username: ")
            console.send(b"ops\n")
            await console.wait_for(b"Password: ")
            console.send(b"staple\n")
            await console.wait_for(b">>> ")
            console.send(b"print('NODE', broker.stats()['node'])\n")
            await console.wait_for(f"NODE n1.w{i}".encode())

        # long-poll: opened on worker 0, polled and sent on through worker 1
        code, opened = await self.lp(
            "POST",
            internal["n1.w0"] + "/lp/open",
            {"t": "hello", "token": make_token(SECRET, "lpuser"), "device": "web"},
        )
        self.assertEqual(code, 200, opened)
        sid, pos = opened["sid"], opened["pos"]
        receipt = await w1.send({"lp": 1}, to="lpuser")
        code, polled = await self.lp("GET", internal["n1.w1"] + f"/lp/poll?sid={sid}&pos={pos}")
        self.assertEqual(code, 200, polled)
        self.assertEqual(
            [(f["body"], f["mid"]) for f in polled["frames"] if f["t"] == "msg"],
            [({"lp": 1}, receipt["mid"])],
        )
        # and through the shared port, whichever worker takes each request
        for n in range(6):
            code, sent = await self.lp(
                "POST",
                f"{self.node.http}/lp/send?sid={sid}",
                {"t": "send", "id": f"s{n}", "to": w0.user, "body": n},
            )
            self.assertEqual(code, 200, sent)
            self.assertEqual(sent["frames"][0]["t"], "receipt")

    async def test_a_killed_worker_is_restarted_and_sigterm_stops_every_worker(self) -> None:
        parent = self.node.pid
        pids = children(parent)
        self.assertEqual(len(pids), 2)
        # SIGHUP to the parent: each worker reloads, the node goes on
        os.kill(parent, signal.SIGHUP)
        await eventually(lambda: self.node.output.count(b"SIGHUP: no keyword filter") == 2)
        self.assertEqual(children(parent), pids)
        victim = min(pids)
        old = {wid: r["addresses"]["http"] for wid, r in self.records.items()}
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: b"exited (killed by signal 9): restarting" in self.node.output)
        # a new process takes its place, and its record comes back with its new address
        await eventually(lambda: len(children(parent) - {victim}) == 2, 30)
        for _ in range(300):
            records = await self.node.records(WORKERS)
            now = {wid: r["addresses"]["http"] for wid, r in records.items()}
            if len(set(now.values()) - set(old.values())) == 1:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(set(now.values()) - set(old.values())), 1, (old, now))
        # SIGTERM to the parent: every worker goes, then the parent
        workers = children(parent)
        await self.node.stop()
        self.assertEqual([p for p in workers if alive(p)], [])
        self.assertIn(b"every worker has stopped", self.node.output)

    async def test_workers_stop_when_the_parent_is_killed(self) -> None:
        workers = children(self.node.pid)
        self.assertEqual(len(workers), 2)
        await self.node.kill()
        await eventually(lambda: not any(alive(p) for p in workers), 30)
        # and they left the registry on the way out
        from o2obroker.backend.redis import RedisBackend, parse_urls

        backend = RedisBackend(parse_urls(self.redis.url), reactor, reactor, "probe")
        backend.start()
        self.addCleanup(backend.stop)
        await backend.when_ready()
        self.assertEqual([r["id"] for r in await backend.nodes()], [])
