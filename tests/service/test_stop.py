"""The graceful stop: a node drains on SIGTERM, for at most ``stop_drain`` seconds."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

from twisted.application import service
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.service.listen import NodeTree
from o2obroker.service.stop import KILL_TIME, DrainOnStop, kill_time
from o2obroker.service.tap import Options, makeService
from o2obroker.transports.tcp import BinaryFactory
from tests.harness import Device, Harness

PEER = {"node": "n2", "ws": "ws://10.0.0.2:8080/ws", "lp": "http://10.0.0.2:8080/lp", "load": 1}


class Recorder(service.Service):
    """A child service that says when it was stopped."""

    def __init__(self) -> None:
        self.stopped = 0

    def stopService(self) -> None:
        super().stopService()
        self.stopped += 1


class DrainOnStopTests(SynchronousTestCase):
    """Three clients, sent away one a slice (``drain_rate = 10``, slices every 0.1 s)."""

    def setUp(self) -> None:
        self.h = Harness(auth="none", stop_drain=5, drain_rate=10)
        self.h.node.supervisor.peers = lambda: [PEER]
        self.h.node.start()
        self.addCleanup(self.h.node.stop)
        self.devices = [self.h.login(user) for user in ("a", "b", "c")]
        for device in self.devices:
            device.read()

    def stop(self, seconds: float = 5, **kw: Any) -> list[object]:
        fired: list[object] = []
        DrainOnStop(self.h.node, seconds, self.h.clock, **kw)().addBoth(fired.append)
        self.h.flush()
        return fired

    def test_clients_get_a_503_with_a_redirect_and_the_stop_waits_for_them(self) -> None:
        fired = self.stop(7)
        self.assertFalse(self.h.node.gateway.accepting)  # new hellos refused meanwhile
        self.assertEqual(self.h.node.gateway.open_connections(), 2)
        self.h.clock.advance(0.1)
        self.assertEqual(fired, [])  # one connection still open
        self.h.clock.advance(0.1)
        self.assertEqual(fired, [None])
        for device in self.devices:
            [error] = device.read()
            self.assertEqual((error["t"], error["code"]), ("error", 503))
            self.assertEqual(error["redirect"]["ws"], PEER["ws"])
            self.assertTrue(device.closed)
        # the bound's timer is gone with the drain
        self.assertNotIn(7.0, [c.getTime() for c in self.h.clock.getDelayedCalls()])

    def test_the_bound_holds_when_clients_stay(self) -> None:
        fired = self.stop(0.15)
        self.h.clock.advance(0.1)
        self.assertEqual(fired, [])
        self.h.clock.advance(0.05)
        self.assertEqual(fired, [None])  # never a failure: the stop goes on
        self.assertEqual(self.h.node.gateway.open_connections(), 1)

    def test_a_second_stop_signal_stops_at_once(self) -> None:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        fired = self.stop(call_from_signal=lambda f: f())
        handler = signal.getsignal(signal.SIGINT)
        self.assertNotIn(handler, before)
        self.assertNotIn(signal.getsignal(signal.SIGTERM), before)
        self.assertEqual(fired, [])
        handler(signal.SIGINT, None)
        self.assertEqual(fired, [None])
        # the process's own handlers are back once the drain is over
        self.assertEqual(
            (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)), before
        )

    def test_without_signals_the_handlers_stay(self) -> None:
        before = signal.getsignal(signal.SIGTERM)
        self.stop()
        self.assertIs(signal.getsignal(signal.SIGTERM), before)


class NodeTreeTests(SynchronousTestCase):
    def tree(self) -> tuple[NodeTree, Recorder]:
        top = NodeTree()
        child = Recorder()
        child.setServiceParent(top)
        top.startService()
        return top, child

    def test_children_stop_after_before_stop_fires(self) -> None:
        from twisted.internet.defer import Deferred

        top, child = self.tree()
        waiting: Deferred[None] = Deferred()
        top.before_stop = lambda: waiting
        stopped: list[object] = []
        top.stopService().addBoth(stopped.append)
        self.assertEqual((child.stopped, stopped), (0, []))  # ports still answer
        waiting.callback(None)
        self.assertEqual(child.stopped, 1)
        self.assertEqual(len(stopped), 1)

    def test_a_failing_before_stop_still_stops(self) -> None:
        top, child = self.tree()
        top.before_stop = lambda: 1 / 0
        stopped: list[object] = []
        top.stopService().addBoth(stopped.append)
        self.assertEqual(child.stopped, 1)
        self.assertEqual(len(stopped), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class MakeServiceTests(SynchronousTestCase):
    def make(self, *argv: str) -> tuple[NodeTree, MemoryReactorClock]:
        options = Options()
        options.parseOptions(["--tcp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0", *argv])
        reactor = MemoryReactorClock()
        reactor.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
        return makeService(options, reactor=reactor), reactor

    def config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"[broker]\n{text}\n")
        return path

    def test_default_stops_at_once(self) -> None:
        top, _ = self.make()
        self.assertIsNone(top.before_stop)
        top.startService()
        stopped: list[object] = []
        top.stopService().addBoth(stopped.append)
        self.assertEqual(len(stopped), 1)
        self.assertTrue(top.node.gateway.accepting)

    def test_stop_drain_drains_then_stops_within_the_bound(self) -> None:
        path = self.config("stop_drain = 5\ndrain_rate = 10")  # one client a slice
        top, reactor = self.make("--config", path)
        top.privilegedStartService()
        top.startService()
        clients = SimpleNamespace(factory=BinaryFactory(top.node.gateway), flush=lambda: None)
        for user in ("a", "b"):
            Device(clients).write({"t": "hello", "v": 1, "device": "d", "user": user})
        self.assertEqual(top.node.gateway.open_connections(), 2)
        stopped: list[object] = []
        top.stopService().addBoth(stopped.append)
        self.assertFalse(top.node.gateway.accepting)
        self.assertEqual(stopped, [])
        self.assertTrue(top.getServiceNamed("tcp").running)  # its port still answers
        reactor.advance(0.1)  # the second client sent away: the node stops
        self.assertEqual(len(stopped), 1)
        self.assertFalse(top.getServiceNamed("tcp").running)

    def test_workers_are_killed_only_after_the_bound(self) -> None:
        redis = "--redis", "redis://127.0.0.1:1"
        top, _ = self.make(*redis, "--workers", "2")
        self.assertEqual(top.getServiceNamed("workers").killTime, KILL_TIME)
        path = self.config("stop_drain = 30")
        top, _ = self.make(*redis, "--workers", "2", "--config", path)
        self.assertEqual(top.getServiceNamed("workers").killTime, 40)
        self.assertEqual(top.getServiceNamed("workers").stop_drain, 30)
        self.assertGreater(kill_time(KILL_TIME), KILL_TIME)


class ConfigTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        self.assertEqual(load(None, {}).stop_drain, 0)
        self.assertEqual(load(None, {"stop_drain": "3600"}).stop_drain, 3600)
        for bad in ("-1", "3600.5", "soon"):
            with self.assertRaises(ConfigError) as e:
                load(None, {"stop_drain": bad})
            self.assertTrue(str(e.exception).startswith("stop_drain: "), str(e.exception))
