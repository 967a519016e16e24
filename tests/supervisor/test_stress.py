"""A real node on loopback pushed past its connection threshold: the scale-out hook fires once."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, inlineCallbacks
from twisted.trial import unittest

from o2obroker.client.binary import connect
from o2obroker.service import tap

THRESHOLD = 50
CLIENTS = 80
APPEND = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read())"


def port_of(svc: Any) -> int:
    ports: list[Any] = []
    svc._waitingForPort.addCallback(lambda p: ports.append(p) or p)
    return ports[0].getHost().port


@inlineCallbacks
def until(condition: Callable[[], bool], what: str, bound: float = 30.0, step: float = 0.02) -> Any:
    """Wait on the real reactor until ``condition()`` holds; fail after ``bound`` seconds.

    The bound only keeps a broken node from hanging the suite: the checks wait
    for what happened, not for a time that a busy machine may not keep.
    """
    deadline = reactor.seconds() + bound
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"no {what} within {bound:g} s")
        yield task.deferLater(reactor, step, lambda: None)


class StressTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_crossing_the_threshold_fires_the_hook_once(self) -> Any:
        fired = self.mktemp()
        command = shlex.join([sys.executable, "-c", APPEND, fired])
        ini = self.mktemp()
        with open(ini, "w", encoding="utf-8") as f:
            f.write(
                "[broker]\n"
                "tcp = tcp:0:interface=127.0.0.1\n"
                "http = tcp:0:interface=127.0.0.1\n"
                "auth = none\n"
                "sample_interval = 0.05\n"
                f"alert_connections = {THRESHOLD}\n"
                "alert_cooldown = 600\n"
                "alert_cpu = 0\n"  # only connections: this machine's own load is not the test's
                "alert_memory = 0\n"
                f"scale_out_command = {command}\n"
            )
        options = tap.Options()
        options.parseOptions(["--config", ini])
        top = tap.makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        supervisor = top.node.supervisor
        endpoint = f"tcp:127.0.0.1:{port_of(top.getServiceNamed('tcp'))}"

        clients = []
        for batch in range(CLIENTS // 20):  # in waves, so samples see the load rise
            wave = yield gatherResults(
                [
                    ensureDeferred(connect(reactor, endpoint, user=f"u{batch}-{i}", device="d"))
                    for i in range(20)
                ]
            )
            clients.extend(wave)
            yield task.deferLater(reactor, 0.06, lambda: None)
        for c in clients:
            self.addCleanup(c.transport.loseConnection)
        self.assertEqual(top.node.gateway.connections["tcp"], CLIENTS)

        # the hook's process writes its stdin, then exits
        yield until(
            lambda: (
                supervisor.counts["scale_out_runs"] == 1
                and "scale_out" not in supervisor.hooks.running
            ),
            "the scale-out hook to run and end",
        )
        # five more samples over the threshold, however long a loaded machine takes
        # to take them: nothing more fires
        samples = supervisor.counts["samples"]
        yield until(lambda: supervisor.counts["samples"] - samples >= 5, "five more samples")

        with open(fired, encoding="utf-8") as f:
            runs = [json.loads(line) for line in f.read().splitlines()]
        self.assertEqual(len(runs), 1)
        self.assertEqual(runs[0]["event"], "scale_out")
        self.assertGreaterEqual(runs[0]["reasons"]["connections"][0], THRESHOLD)
        self.assertEqual(supervisor.counts["scale_out_runs"], 1)
        self.assertEqual(supervisor.counts["alerts"], 1)
        self.assertEqual(supervisor.state, "alerting")
        self.assertEqual(supervisor.last.duplex, CLIENTS)

        # and the node drains them all, a few at a time, each told to go elsewhere
        closed: list[Deferred[None]] = [c.closed for c in clients]
        yield supervisor.drain()
        yield gatherResults(closed)
        self.assertEqual(top.node.gateway.connections["tcp"], 0)
        self.assertTrue(all(c.frames[-1]["code"] == 503 for c in clients))
