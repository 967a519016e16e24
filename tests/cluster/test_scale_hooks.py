"""The example scale hooks (etc/scale-out-local, etc/scale-in-local) on real processes.

One node on a real Redis, with a low connection threshold and the example
hooks configured: real clients over the threshold make its supervisor run
the scale-out hook, which starts a second node as a daemon; new clients are
handed to it, a drain of the first node redirects to it, and once it is quiet
its own supervisor runs the scale-in hook, which drains it and stops it. Every
process started on the way (nodes and hooks) is gone at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from o2obroker.client import ClientError, connect
from o2obroker.session.auth import make_token
from tests.cluster.nodes import SECRET, TWISTD, BrokerProcess
from tests.redis_server import RedisServer, free_port

ETC = Path(__file__).resolve().parents[2] / "etc"
SCALE_OUT = str(ETC / "scale-out-local")
SCALE_IN = str(ETC / "scale-in-local")
API = {"Authorization": "Bearer k"}


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return False


async def until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float,
    what: Callable[[], str],
) -> None:
    """Wait, by the wall clock, for something other processes make true."""
    deadline = reactor.seconds() + within
    while True:
        result = check()
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {within:g}s: {what()}")
        await deferLater(reactor, 0.1, lambda: None)


class ConfiguredNode(BrokerProcess):
    """A node whose every setting is in its config file, as the hooks need it;
    ``{config}`` in ``settings`` is that file's path."""

    def __init__(self, name: str, redis_url: str, settings: str) -> None:
        super().__init__(name, redis_url)
        with open(self.config, "w") as f:
            f.write(
                f"[broker]\nnode = {name}\nsecret = {SECRET}\napi_key = k\n"
                f"redis = {redis_url}\nnode_heartbeat = 0.5\nredis_timeout = 2\n"
                f"backend_timeout = 2\ntcp = tcp:{self.tcp_port}:interface=127.0.0.1\n"
                f"http = tcp:{self.http_port}:interface=127.0.0.1\n"
                + settings.replace("{config}", self.config)
            )
        self.args = [TWISTD, "-n", "--pidfile=", "o2obroker", "--config", self.config]


class RunDirectory:
    """What the hooks left in their run directory: records, pids, their log."""

    def __init__(self, case: TestCase) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="o2o-scale-run-"))
        case.addCleanup(self.destroy)

    def records(self) -> dict[str, dict[str, Any]]:
        return {
            p.stem: json.loads(p.read_text())
            for p in self.path.glob("*.json")
            if p.stat().st_size  # written whole by a rename; never empty
        }

    def log(self) -> str:
        path = self.path / "hooks.log"
        return path.read_text() if path.exists() else ""

    def hook_pids(self) -> set[int]:
        """Every hook process that ran here, by the pid each log line carries."""
        return {int(pid) for pid in re.findall(r"\[(\d+)\]", self.log())}

    def node_pids(self) -> set[int]:
        pids = set()
        for pidfile in self.path.glob("*.pid"):
            with contextlib.suppress(ValueError):
                pids.add(int(pidfile.read_text().strip()))
        return pids | {r["pid"] for r in self.records().values()}

    def destroy(self) -> None:
        # nodes a failed test left running: they are daemons, nobody else ends them
        for pid in self.node_pids() | self.hook_pids():
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.path, ignore_errors=True)


async def nodes_of(node: BrokerProcess) -> dict[str, dict[str, Any]]:
    r = await treq.get(f"{node.http}/api/v1/nodes", headers=API, persistent=False)
    return {n["id"]: n for n in json.loads(await r.content())["nodes"]}


class GrowAndShrinkTests(TestCase):
    timeout = 150

    async def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        self.run = RunDirectory(self)
        python, run = sys.executable, self.run.path
        hooks = (
            f"scale_out_command = {python} {SCALE_OUT} --config {{config}} --run-dir {run}\n"
            f"scale_in_command = {python} {SCALE_IN} --config {{config}} --run-dir {run} --wait 5\n"
        )
        settings = (
            "sample_interval = 0.2\nalert_connections = 5\nalert_cooldown = 600\n"
            # quiet = no connection at all, whatever the CPU and memory of a busy machine
            "scale_in_connections = 0\nscale_in_cpu = 1000\nscale_in_memory = 100\n"
            "scale_in_after = 5\nhook_timeout = 40\n"
        )
        self.n1 = ConfiguredNode("n1", self.redis.url, settings + hooks)
        self.addCleanup(self.n1.destroy)
        await self.n1.start()

    async def client(self, endpoint: str, user: str) -> Any:
        c = await connect(reactor, endpoint, token=make_token(SECRET, user), device="d")
        self.addCleanup(lambda: c.transport.abortConnection() if c.transport else None)
        return c

    async def test_load_grows_the_cluster_and_quiet_shrinks_it(self) -> None:
        n1, run = self.n1, self.run
        # over the threshold: five real clients
        crowd = [await self.client(n1.tcp, f"u{i}") for i in range(5)]
        listed: dict[str, dict[str, Any]] = {}

        async def registered() -> bool:
            listed.update(await nodes_of(n1))
            return "n1-1" in listed

        await until(registered, 60, lambda: f"a new node in the registry ({run.log()!r})")
        record = run.records()["n1-1"]
        self.assertEqual(record["asked_by"], "n1")  # run by n1's supervisor
        self.assertTrue(running(record["pid"]))
        new_tcp = listed["n1-1"]["addresses"]["tcp"]
        self.assertEqual(new_tcp, f"127.0.0.1:{record['ports']['tcp']}")
        self.assertNotEqual(record["ports"]["tcp"], n1.tcp_port)

        # new clients are handed to the new node...
        r = await treq.get(f"{n1.http}/getFreeHostAddress", persistent=False)
        free = json.loads(await r.content())
        self.assertEqual((free["node"], free["tcp"]), ("n1-1", new_tcp))
        host, port = free["tcp"].rsplit(":", 1)
        late = await self.client(f"tcp:{host}:{port}", "late")
        self.assertEqual((await late.welcome)["node"], "n1-1")

        # ...and a drain of the first node sends its clients there: n1 reads the
        # registry at each heartbeat (0.5 s), so give it two to see the new node
        await deferLater(reactor, 1.0, lambda: None)
        r = await treq.post(f"{n1.http}/api/v1/drain", headers=API, persistent=False)
        self.assertEqual(r.code, 202)
        await gatherResults([c.closed for c in crowd])
        for c in crowd:
            self.assertEqual(c.lost.frame["code"], 503)
            self.assertEqual(c.lost.frame["redirect"]["tcp"], new_tcp)
        with self.assertRaises(ClientError) as refused:
            await self.client(n1.tcp, "later")
        self.assertEqual(refused.exception.frame["code"], 503)
        self.assertEqual(refused.exception.frame["redirect"]["tcp"], new_tcp)

        # quiet: the new node's supervisor runs the scale-in hook, which drains and
        # stops the newest node the scale-out hook started, itself
        await late.bye()

        async def departed() -> bool:
            return "n1-1" not in await nodes_of(n1)

        await until(departed, 60, lambda: f"the new node gone from the registry ({run.log()!r})")
        await until(lambda: not running(record["pid"]), 15, lambda: "the new node's process gone")
        # the hook outlives the node that ran it (it stopped it), and says so last
        await until(lambda: "scale-in: n1-1 stopped" in run.log(), 15, run.log)
        self.assertEqual(run.records(), {})
        self.assertTrue(n1.running)  # the node it did not start is left alone

        await n1.stop()
        everything = run.node_pids() | run.hook_pids() | {record["pid"]}
        await until(
            lambda: not any(running(pid) for pid in everything),
            15,
            lambda: f"still running: {[p for p in everything if running(p)]}",
        )


class HookCommandTests(TestCase):
    """The hooks run by hand (as an operator would try them), on a real Redis."""

    timeout = 90

    def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        self.run = RunDirectory(self)
        # room above each listener's port, for the nodes the hooks start
        self.tcp = free_run(4)
        self.http = free_run(4, avoid=range(self.tcp, self.tcp + 4))
        self.config = self.run.path / "node.ini"
        self.config.write_text(
            f"[broker]\nnode = edge\nsecret = {SECRET}\napi_key = k\nredis = {self.redis.url}\n"
            f"node_heartbeat = 0.5\ntcp = tcp:{self.tcp}:interface=127.0.0.1\n"
            f"http = tcp:{self.http}:interface=127.0.0.1\n"
        )

    async def hook(
        self, script: str, payload: bytes = b"{}", config: Path | None = None
    ) -> tuple[bytes, int]:
        """Run a hook to its end: what it said (stderr) and its exit status."""
        argv = [script, "--config", str(config or self.config), "--run-dir", str(self.run.path)]
        # the payload through a shell pipe: getProcessOutputAndValue has no stdin
        command = f"printf %s {_quote(payload)} | {_quote(sys.executable)} " + " ".join(
            _quote(a) for a in argv
        )
        _, err, code = await getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env=dict(os.environ)
        )
        return err, code

    async def test_two_at_once_take_free_ports_and_scale_in_drains_the_newest_first(self) -> None:
        # the first port above the node's own is taken by someone else
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", self.tcp + 1))
            busy.listen()
            both = [Deferred.fromCoroutine(self.hook(SCALE_OUT)) for _ in range(2)]
            results = await gatherResults(both)
        for err, code in results:
            self.assertEqual(code, 0, err)
        records = self.run.records()
        self.assertEqual(sorted(records), ["edge-1", "edge-2"])
        ports = sorted(p for r in records.values() for p in r["ports"].values())
        self.assertEqual(len(set(ports)), 4)
        self.assertNotIn(self.tcp + 1, ports)
        self.assertNotIn(self.tcp, ports)
        for r in records.values():
            self.assertTrue(running(r["pid"]))
            self.assertTrue(Path(r["ini"]).exists())

        # scale-in takes the newest first: its client is sent to the other node
        newest = records["edge-2"]
        client = await connect(
            reactor,
            f"tcp:127.0.0.1:{newest['ports']['tcp']}",
            token=make_token(SECRET, "alice"),
            device="d",
        )
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())

        async def both_listed() -> bool:
            r = await treq.get(f"{newest['http']}/api/v1/nodes", headers=API, persistent=False)
            return len(json.loads(await r.content())["nodes"]) == 2

        await until(both_listed, 20, lambda: "both nodes in the registry")
        await deferLater(reactor, 1.0, lambda: None)  # two heartbeats: edge-2 knows edge-1
        err, code = await self.hook(SCALE_IN)
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"anyway", err)  # drained, not stopped with its clients
        await client.closed
        self.assertEqual(client.lost.frame["code"], 503)
        edge_1 = records["edge-1"]["ports"]["tcp"]
        self.assertEqual(client.lost.frame["redirect"]["tcp"], f"127.0.0.1:{edge_1}")
        self.assertEqual(sorted(self.run.records()), ["edge-1"])
        self.assertFalse(running(records["edge-2"]["pid"]))
        self.assertTrue(running(records["edge-1"]["pid"]))
        err, code = await self.hook(SCALE_IN)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.run.records(), {})
        self.assertFalse(running(records["edge-1"]["pid"]))
        err, code = await self.hook(SCALE_IN)
        self.assertEqual(code, 0, err)
        self.assertIn(b"nothing to do", err)

    async def test_a_node_being_stopped_is_left_to_that_run_unless_it_died(self) -> None:
        err, code = await self.hook(SCALE_OUT)
        self.assertEqual(code, 0, err)
        path = self.run.path / "edge-1.json"
        record = json.loads(path.read_text())
        # another scale-in, still running (this process stands for it), has it
        path.write_text(json.dumps({**record, "leaving_by": os.getpid()}))
        err, code = await self.hook(SCALE_IN)
        self.assertEqual(code, 0, err)
        self.assertIn(b"nothing to do", err)
        self.assertTrue(running(record["pid"]))
        # that run died half way (killed at hook_timeout): the next one finishes the job
        gone = await getProcessOutputAndValue(
            sys.executable, ["-c", "import os; print(os.getpid())"]
        )
        path.write_text(json.dumps({**record, "leaving_by": int(gone[0])}))
        err, code = await self.hook(SCALE_IN)
        self.assertEqual(code, 0, err)
        self.assertIn(b"scale-in: edge-1 stopped", err)
        self.assertFalse(running(record["pid"]))

    async def test_the_embedded_backend_is_refused_in_one_line(self) -> None:
        alone = self.run.path / "alone.ini"
        alone.write_text(f"[broker]\nnode = edge\ntcp = tcp:{self.tcp}:interface=127.0.0.1\n")
        err, code = await self.hook(SCALE_OUT, config=alone)
        self.assertEqual(code, 1)
        self.assertEqual(
            err.decode().strip(),
            "scale-out-local: a second node needs the Redis backend: "
            "set redis = redis://... in the config",
        )
        self.assertEqual(self.run.records(), {})

    async def test_a_bad_payload_is_refused(self) -> None:
        err, code = await self.hook(SCALE_OUT, payload=b"not json")
        self.assertEqual(code, 1)
        self.assertIn(b"stdin is not the hook's JSON payload", err)
        self.assertEqual(self.run.records(), {})

    async def test_a_bad_config_is_refused_in_one_line(self) -> None:
        broken = self.run.path / "broken.ini"
        broken.write_text(self.config.read_text() + "hb = 0\n")
        err, code = await self.hook(SCALE_OUT, config=broken)
        self.assertEqual(code, 1)
        self.assertEqual(
            err.decode().strip(), "scale-out-local: hb: must be at least 1 second, not 0"
        )

    async def test_a_node_that_cannot_start_is_reported(self) -> None:
        # the hook's checks pass; the node's own start-up refuses the missing keys file
        broken = self.run.path / "broken.ini"
        missing = self.run.path / "no-such-keys"
        broken.write_text(
            self.config.read_text()
            + f"manhole = tcp:{free_port()}:interface=127.0.0.1\nmanhole_keys = {missing}\n"
        )
        err, code = await self.hook(SCALE_OUT, config=broken)
        self.assertEqual(code, 1)
        self.assertIn(b"scale-out-local: edge-1 did not start: o2obroker: manhole_keys", err)
        self.assertEqual(self.run.records(), {})
        self.assertFalse((self.run.path / "edge-1.ini").exists())


def free_run(n: int, avoid: range = range(0)) -> int:
    """A port p such that p .. p + n - 1 are all free now (and none in ``avoid``)."""
    while True:
        p = free_port()
        if p + n > 65536 or any(q in avoid for q in range(p, p + n)):
            continue
        with contextlib.ExitStack() as held:
            try:
                for q in range(p, p + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", q))
            except OSError:
                continue
        return p


def _quote(value: str | bytes) -> str:
    return shlex.quote(value.decode() if isinstance(value, bytes) else value)
