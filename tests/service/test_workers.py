"""The parent of a node's workers and a worker's own parts, without real workers.

Processes are spawned on a fake reactor that records them (the parent's
logic); sockets and pipes are real, since sharing them is the point. The
real processes are in tests/cluster/test_workers.py.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from o2obroker.config import Config, ConfigError, load
from o2obroker.service.listen import StartupError
from o2obroker.service.tap import Options, makeService
from o2obroker.service.workers import (
    HTTP_FD,
    TCP_FD,
    AdoptedPort,
    InternalPort,
    ParentWatch,
    Workers,
    bind_group,
    shift_port,
    tcp_address,
    worker_argv,
    worker_config,
)
from o2obroker.transports.api import node_totals, public_addresses
from tests.backend.test_redis_outage import eventually

TWISTD = str(Path(sys.executable).with_name("twistd"))


class FakeProcess:
    """A spawned process as the parent sees it: the signals it was sent."""

    def __init__(self, proto: Any, args: list[str], child_fds: dict[int, Any]) -> None:
        self.proto = proto
        self.args = args
        self.child_fds = child_fds
        self.signals: list[str] = []
        self.ended = False
        proto.makeConnection(self)

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def end(self, reason: Exception) -> None:
        self.ended = True
        self.proto.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    """MemoryReactor and Clock that records the processes it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> Any:
        p = FakeProcess(proto, args, kw["childFDs"])
        self.processes.append(p)
        return p


def captured(case: TestCase) -> list[str]:
    """The text of every log event while the test runs."""
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_format") and event.get("log_level", LogLevel.info) >= LogLevel.info:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


FREE = {"tcp": "tcp:0:interface=127.0.0.1", "http": "tcp:0:interface=127.0.0.1"}


class WorkersTests(TestCase):
    """The parent: sockets once, one worker per index, restarts, stop."""

    def make(self, count: int = 2) -> tuple[Workers, ProcessReactor]:
        clock = ProcessReactor()
        workers = Workers(
            "n1", count, lambda i: ["python", f"w{i}"], FREE, clock, env={}, signals=False
        )
        return workers, clock

    def start(self, workers: Workers) -> None:
        workers.privilegedStartService()
        workers.startService()
        self.addCleanup(lambda: [s.close() for g in workers.sockets.values() for s in g])

    def test_each_worker_gets_its_own_socket_of_each_shared_port(self) -> None:
        workers, clock = self.make(3)
        self.start(workers)
        self.assertEqual(len(clock.processes), 3)
        tcp, http = workers.sockets["tcp"], workers.sockets["http"]
        # one port per key, one socket per worker
        self.assertEqual(len({s.getsockname()[1] for s in tcp}), 1)
        self.assertEqual(len({s.getsockname()[1] for s in http}), 1)
        for i, p in enumerate(sorted(clock.processes, key=lambda p: p.args[1])):
            self.assertEqual(p.args, ["python", f"w{i}"])
            self.assertEqual(p.child_fds[TCP_FD], tcp[i].fileno())
            self.assertEqual(p.child_fds[HTTP_FD], http[i].fileno())
            # the parent pipe: the worker reads, the parent never writes
            self.assertEqual(p.child_fds[0], "w")

    def test_a_worker_that_dies_is_restarted_with_its_sockets_and_a_log_line(self) -> None:
        lines = captured(self)
        workers, clock = self.make(2)
        self.start(workers)
        clock.advance(100)  # lived long enough: restarted at once
        dead = clock.processes[0]
        dead.end(ProcessTerminated(signal=9))
        self.assertIn("worker n1.w0 exited (killed by signal 9): restarting in 0 s", lines)
        clock.advance(0)
        self.assertEqual(len(clock.processes), 3)
        again = clock.processes[2]
        self.assertEqual(again.args, dead.args)
        self.assertEqual(again.child_fds, dead.child_fds)

    def test_a_worker_that_dies_at_once_waits_longer_each_time(self) -> None:
        lines = captured(self)
        workers, clock = self.make(1)
        self.start(workers)
        delays = []
        for _ in range(4):
            clock.processes[-1].end(ProcessTerminated(exitCode=1))
            delays.append(lines[-1].rpartition(" in ")[2])
            clock.advance(1000)  # past any backoff: the next one starts
        self.assertEqual(delays, ["1 s", "2 s", "4 s", "8 s"])
        self.assertIn("worker n1.w0 exited (exit status 1)", lines[-1])

    def test_stop_terms_every_worker_and_fires_once_all_have_ended(self) -> None:
        workers, clock = self.make(2)
        self.start(workers)
        sockets = [s for g in workers.sockets.values() for s in g]
        d = workers.stopService()
        self.assertEqual([p.signals for p in clock.processes], [["TERM"], ["TERM"]])
        self.assertNoResult(d)
        clock.processes[0].end(ProcessDone(0))
        self.assertNoResult(d)
        # one that ignores SIGTERM gets SIGKILL after killTime
        clock.advance(workers.killTime)
        self.assertEqual(clock.processes[1].signals, ["TERM", "KILL"])
        clock.processes[1].end(ProcessTerminated(signal=9))
        self.successResultOf(d)
        # no restart, and the shared sockets are closed with the last worker
        clock.advance(1000)
        self.assertEqual(len(clock.processes), 2)
        self.assertTrue(all(s.fileno() == -1 for s in sockets))

    def test_a_second_stop_signal_goes_on_to_draining_workers(self) -> None:
        clock = ProcessReactor()
        clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
        workers = Workers("n1", 2, lambda i: ["python", f"w{i}"], FREE, clock, env={})
        workers.stop_drain = 5
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        self.start(workers)
        d = workers.stopService()
        self.assertEqual([p.signals for p in clock.processes], [["TERM"], ["TERM"]])
        clock.processes[0].end(ProcessDone(0))
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        self.assertEqual([p.signals for p in clock.processes], [["TERM"], ["TERM", "TERM"]])
        clock.processes[1].end(ProcessDone(0))
        self.successResultOf(d)
        self.assertEqual(
            (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)), before
        )

    def test_sighup_goes_on_to_every_live_worker(self) -> None:
        workers, clock = self.make(2)
        self.start(workers)
        clock.advance(100)
        clock.processes[1].end(ProcessTerminated(signal=9))  # its successor not yet started
        workers.hangup()
        self.assertEqual([p.signals for p in clock.processes], [["HUP"], []])

    def test_a_busy_port_stops_the_parent_before_any_worker(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        clock = ProcessReactor()
        workers = Workers(
            "n1",
            2,
            lambda i: ["x"],
            {"tcp": f"tcp:{port}:interface=127.0.0.1"},
            clock,
            env={},
            signals=False,
        )
        e = self.assertRaises(StartupError, workers.privilegedStartService)
        self.assertEqual(
            str(e), f"tcp: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
        )
        self.assertEqual(clock.processes, [])


class BindGroupTests(TestCase):
    def test_connections_reach_every_socket_of_the_group(self) -> None:
        group = bind_group("tcp", "tcp:0:interface=127.0.0.1", 2)
        self.addCleanup(lambda: [s.close() for s in group])
        port = group[0].getsockname()[1]
        # the kernel spreads by the client's address and port: enough clients hit both
        clients = []
        for _ in range(64):
            c = socket.create_connection(("127.0.0.1", port))
            clients.append(c)
        self.addCleanup(lambda: [c.close() for c in clients])
        accepted = [0, 0]
        for i, s in enumerate(group):
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[i] += 1
        self.assertEqual(sum(accepted), 64)
        self.assertTrue(all(accepted), accepted)

    def test_a_port_held_by_another_reuseport_group_is_refused(self) -> None:
        first = bind_group("http", "tcp:0:interface=127.0.0.1", 1)
        self.addCleanup(first[0].close)
        port = first[0].getsockname()[1]
        e = self.assertRaises(
            StartupError, bind_group, "http", f"tcp:{port}:interface=127.0.0.1", 2
        )
        self.assertIn("address already in use", str(e))

    def test_endpoint_descriptions(self) -> None:
        self.assertEqual(
            tcp_address("tcp:9100:interface=127.0.0.1:backlog=500"),
            (socket.AF_INET, "127.0.0.1", 9100, 500),
        )
        # a node's default backlog, not Twisted's 50, as for a single process's ports
        self.assertEqual(tcp_address("tcp:port=80"), (socket.AF_INET, "0.0.0.0", 80, 1024))
        self.assertEqual(
            tcp_address("tcp6:8080:interface=\\:\\:1"), (socket.AF_INET6, "::1", 8080, 1024)
        )
        self.assertEqual(
            shift_port("tcp:2222:interface=127.0.0.1", 3), "tcp:2225:interface=127.0.0.1"
        )
        # an escaped colon of an IPv6 interface is not a part: its "1" is no port
        self.assertEqual(
            shift_port("tcp6:interface=\\:\\:1:port=2222", 2),
            "tcp6:interface=\\:\\:1:port=2224",
        )
        self.assertEqual(
            shift_port("tcp:port=2222:interface=::1", 1), "tcp:port=2223:interface=::1"
        )
        self.assertEqual(
            shift_port("unix:/run/o2o.sock:mode=600", 2), "unix:/run/o2o.sock.w2:mode=600"
        )
        self.assertEqual(shift_port("unix:address=/run/c", 1), "unix:address=/run/c.w1")
        self.assertEqual(shift_port("unix:/run/o2o.sock", 0), "unix:/run/o2o.sock")


class WorkerConfigTests(TestCase):
    def test_more_than_one_worker_needs_redis(self) -> None:
        e = self.assertRaises(ConfigError, load, None, {"workers": 2})
        self.assertEqual(
            str(e),
            "workers: 2 workers need the Redis backend (redis = ..., --redis):"
            " the embedded backend lives in one process",
        )
        self.assertEqual(load(None, {"workers": 1}).workers, 1)
        self.assertEqual(load(None, {"workers": 2, "redis": "redis://h"}).workers, 2)

    def test_worker_counts_and_endpoints(self) -> None:
        for bad in ("0", "65"):
            e = self.assertRaises(ConfigError, load, None, {"workers": bad, "redis": "redis://h"})
            self.assertIn("workers: must be 1 to 64", str(e))
        e = self.assertRaises(
            ConfigError,
            load,
            None,
            {"workers": 2, "redis": "redis://h", "http": "unix:/tmp/o2o.sock"},
        )
        self.assertIn("http: workers share tcp: or tcp6: ports only", str(e))

    def test_each_worker_has_its_id_share_of_limits_console_port_and_hooks(self) -> None:
        config = Config(
            node="edge",
            workers=4,
            redis="redis://h",
            hard_connections=30_001,
            alert_connections=20_000,
            scale_in_connections=0,
            manhole="tcp:2222:interface=127.0.0.1",
            scale_out_command="grow",
        )
        w0, w3 = worker_config(config, 0), worker_config(config, 3)
        self.assertEqual((w0.node, w3.node), ("edge.w0", "edge.w3"))
        # each worker holds its share: together never more than the node's limit + N - 1
        self.assertEqual((w3.hard_connections, w3.alert_connections), (7501, 5000))
        self.assertEqual(w3.scale_in_connections, 0)  # off stays off
        self.assertEqual(w3.advice_min_connections, 250)
        self.assertEqual(w0.manhole, "tcp:2222:interface=127.0.0.1")
        self.assertEqual(w3.manhole, "tcp:2225:interface=127.0.0.1")
        # one scale hook run per node, not per worker
        self.assertEqual((w0.scale_out_command, w3.scale_out_command), ("grow", None))
        self.assertEqual(config.node, "edge")  # the node's own config is left as it was

    def test_worker_command_line(self) -> None:
        given = {"config": "o2o.ini", "redis": "redis://h", "workers": "2", "node": "n"}
        names = [p[0] for p in Options.optParameters]
        argv = worker_argv(given, names, 1, executable="py")
        self.assertEqual(argv[:6], ["py", "-c", argv[2], "--nodaemon", "--pidfile=", "o2obroker"])
        self.assertIn("twistd", argv[2])
        rest = argv[6:]
        self.assertEqual(rest[rest.index("--config") + 1], os.path.abspath("o2o.ini"))
        self.assertEqual(rest[rest.index("--redis") + 1], "redis://h")
        self.assertEqual(rest[rest.index("--workers") + 1], "2")
        self.assertEqual(rest[-2:], ["--worker", "1"])

    def test_node_totals_sum_the_workers_of_each_node(self) -> None:
        def record(node: str, i: int, tcp: int, ws: int) -> dict[str, Any]:
            return {
                "id": f"{node}.w{i}",
                "connections": {"tcp": tcp, "ws": ws},
                "worker": {"node": node, "index": i, "count": 2},
            }

        records = [record("a", 0, 10, 1), record("a", 1, 5, 2), record("b", 0, 1, 0), {"id": "c"}]
        totals = node_totals(records)
        self.assertEqual(set(totals), {"a", "b"})
        self.assertEqual(totals["a"]["connections"], {"tcp": 15, "ws": 3})
        self.assertEqual((totals["a"]["workers"], totals["a"]["count"]), (2, 2))
        self.assertEqual(totals["b"]["workers"], 1)
        self.assertIn("occupancy", totals["a"])

    def test_a_worker_publishes_its_own_http_address(self) -> None:
        class Node:
            config = Config(public_host="10.0.0.5")
            http_port = 8080
            tcp_port = 9100
            internal_http = "http://10.0.0.5:41000"

        where = public_addresses(Node())
        self.assertEqual(where["http"], "http://10.0.0.5:41000")
        self.assertEqual(where["ws"], "ws://10.0.0.5:8080/ws")
        self.assertEqual(where["tcp"], "10.0.0.5:9100")


class TreeTests(TestCase):
    """What ``twistd o2obroker`` builds with workers: the parent, or one worker."""

    def test_the_node_process_becomes_the_parent_of_its_workers(self) -> None:
        options = Options()
        options.parseOptions(["--workers", "3", "--redis", "redis://h", "--node", "edge"])
        top = makeService(options, ProcessReactor())
        workers = top.getServiceNamed("workers")
        self.assertEqual((workers.node, workers.count), ("edge", 3))
        self.assertEqual(sorted(workers._processes), ["edge.w0", "edge.w1", "edge.w2"])
        self.assertFalse(hasattr(top, "node"))  # no node, no backend in the parent
        self.assertEqual([s.name for s in top], ["workers"])

    def test_a_worker_builds_a_node_on_adopted_ports(self) -> None:
        options = Options()
        options.parseOptions(["--workers", "2", "--redis", "redis://h", "--worker", "1"])
        top = makeService(options, ProcessReactor())
        self.assertEqual(top.node.config.node, "n1.w1")
        self.assertEqual(top.node.worker, {"node": "n1", "index": 1, "count": 2})
        self.assertIsInstance(top.getServiceNamed("tcp"), AdoptedPort)
        self.assertEqual(top.getServiceNamed("tcp").fd, TCP_FD)
        self.assertEqual(top.getServiceNamed("http").fd, HTTP_FD)
        self.assertIsInstance(top.getServiceNamed("http-internal"), InternalPort)

    def test_a_worker_index_out_of_range_is_refused(self) -> None:
        for bad in ("2", "-1", "x"):
            e = self.assertRaises(
                UsageError,
                Options().parseOptions,
                ["--workers", "2", "--redis", "redis://h", "--worker", bad],
            )
            self.assertEqual(str(e), f"worker: must be 0 to 1 (workers = 2), not {bad!r}")


class WorkerPartsTests(TestCase):
    """What a worker runs: the adopted port and the parent pipe."""

    def test_parent_pipe_end_of_file_means_the_parent_is_gone(self) -> None:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        clock = MemoryReactorClock()
        gone: list[bool] = []
        watch = ParentWatch(clock, lambda: gone.append(True), fd=r)
        watch.start()
        self.assertIn(watch, clock.getReaders())
        watch.doRead()  # nothing to read yet (a spurious wake-up): still there
        self.assertEqual(gone, [])
        os.close(w)  # what the kernel does when the parent dies, kill -9 included
        watch.doRead()
        self.assertEqual(gone, [True])
        self.assertNotIn(watch, clock.getReaders())

    async def test_parent_pipe_hang_up_on_the_real_reactor(self) -> None:
        # epoll tells a reader of a pipe whose writer is gone by connectionLost, not doRead
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        gone: list[bool] = []
        watch = ParentWatch(reactor, lambda: gone.append(True), fd=r)
        watch.start()
        self.addCleanup(watch.stop)
        os.close(w)
        await eventually(lambda: gone)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(gone, [True])  # once, however the reactor says it

    async def test_an_adopted_socket_takes_connections(self) -> None:
        (sock,) = bind_group("tcp", "tcp:0:interface=127.0.0.1", 1)
        self.addCleanup(sock.close)
        got: list[Protocol] = []

        class Seen(Protocol):
            def connectionMade(self) -> None:
                got.append(self)

        ports: list[int] = []
        adopted = AdoptedPort(
            "tcp", os.dup(sock.fileno()), Factory.forProtocol(Seen), reactor, ports.append
        )
        adopted.privilegedStartService()
        adopted.startService()
        self.assertEqual(ports, [sock.getsockname()[1]])
        client = socket.create_connection(("127.0.0.1", ports[0]))
        self.addCleanup(client.close)
        await eventually(lambda: got)
        for p in got:
            p.transport.loseConnection()
        await adopted.stopService()
        # the parent's socket still listens: the next worker adopts it
        self.assertNotEqual(sock.fileno(), -1)


class RefusedTests(TestCase):
    timeout = 60

    async def test_workers_on_the_embedded_backend_are_refused_with_one_line(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [TWISTD, "-n", "--pidfile=", "o2obroker", "--workers", "2"],
            env=dict(os.environ),
            reactor=reactor,
        )
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(
            err.decode().splitlines(),
            [
                "o2obroker: workers: 2 workers need the Redis backend (redis = ..., --redis):"
                " the embedded backend lives in one process"
            ],
        )
