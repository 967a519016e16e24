"""RoutedClient against real nodes: it goes where the look-up says, and to the
standby when that node is killed."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from treq import json_content
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from o2obroker.client import LookupFailed, RoutedClient, connect
from o2obroker.client.routed import tcp_endpoint
from o2obroker.config import AppSettings, Config
from o2obroker.routing import NodeInfo, StaticDirectory
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.transports.tcp import BinaryFactory
from tests.service.test_logs import TWISTD, _Collect


class EndpointTests(SynchronousTestCase):
    def test_tcp_addresses_become_endpoints(self) -> None:
        self.assertEqual(tcp_endpoint("10.0.0.2:9100"), "tcp:10.0.0.2:9100")
        self.assertEqual(tcp_endpoint("[::1]:9100"), r"tcp:\:\:1:9100")

    def test_key_or_room(self) -> None:
        self.assertRaises(ValueError, RoutedClient, reactor, [])
        self.assertRaises(ValueError, RoutedClient, reactor, [], key="k", room="r")


class FailoverTests(TestCase):
    timeout = 60

    async def twistd(self, node_id: str) -> int:
        """A real node process on the memory backend; its binary TCP port."""
        proto = _Collect()
        workdir = self.mktemp()
        os.mkdir(workdir)
        args = [TWISTD, "-n", "--pidfile=", "o2obroker", "--log-format", "json", "--node", node_id]
        args += ["--tcp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
        process = reactor.spawnProcess(
            proto, sys.executable, [sys.executable, *args], env=dict(os.environ), path=workdir
        )
        self.processes[node_id] = process

        def stop() -> Deferred[Any]:
            if process.pid is not None:
                process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(stop)
        started = await proto.wait_for("BinaryFactory starting on")
        return int(started["message"].rsplit(" ", 1)[1])

    async def setUp(self) -> None:
        self.processes: dict[str, Any] = {}
        ports = {n: await self.twistd(n) for n in ("a", "b")}
        self.addresses = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
        # the registry centre: a node whose directory names the two real ones
        config = Config(auth="none", cluster="c0", apps={"shop": AppSettings(cluster="c1")})
        self.centre = Node(config, reactor)
        self.centre.directory = StaticDirectory(
            NodeInfo(n, "c1", {"tcp": address}) for n, address in self.addresses.items()
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            build_site(self.centre, reactor)
        )
        self.addCleanup(port.stopListening)
        self.lookup = f"http://127.0.0.1:{port.getHost().port}"

    async def route(self, key: str) -> dict[str, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        response = await http.get(f"{self.lookup}/api/v1/route?app=shop&key={key}")
        return await json_content(response)

    async def message(self, node: str, body: Any) -> None:
        bob = await connect(reactor, tcp_endpoint(self.addresses[node]), user="bob")
        await bob.send(body, to="alice")
        await bob.bye()

    async def test_killed_node_hands_the_device_to_the_standby(self) -> None:
        got: list[dict[str, Any]] = []
        client = RoutedClient(
            reactor,
            ["http://127.0.0.1:1", self.lookup],  # the first look-up is down: the next answers
            app="shop",
            key="store-42",
            hello={"user": "alice", "device": "phone"},
            on_msg=got.append,
        )
        self.addCleanup(client.stop)
        answer = await self.route("store-42")
        first = await client.start()
        self.assertEqual(client.node, answer["node"]["id"])
        await self.message(client.node, {"n": 1})
        while not got:
            await _turn()
        self.processes[answer["node"]["id"]].signalProcess("KILL")
        await first.closed
        second = await client.wait_connected()
        self.assertIsNot(second, first)
        self.assertEqual((client.node, client.moves), (answer["standby"]["id"], 1))
        receipt = await client.send({"n": "from alice"}, to="bob", id="a-1")
        self.assertEqual(receipt["status"], "stored")
        await self.message(client.node, {"n": 2})
        while len(got) < 2:
            await _turn()
        self.assertEqual([m["body"] for m in got], [{"n": 1}, {"n": 2}])

    async def test_the_command_line_sends_through_the_route(self) -> None:
        answer = await self.route("store-7")
        route = ["-m", "o2obroker.client", "--route", self.lookup]
        send = ["send", "--to", "alice", '{"n": 7}']
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*route, "--app", "shop", "--key", "store-7", "--user", "carol", *send],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["status"], "stored")
        # stored on the node the route named: alice finds it there
        alice = await connect(reactor, tcp_endpoint(answer["node"]["tcp"]), user="alice")
        msg = await alice.next_message()
        self.assertEqual((msg["from"], msg["body"]), ("carol", {"n": 7}))
        await alice.bye()

    async def test_the_command_line_says_unknown_app_in_one_line(self) -> None:
        route = ["-m", "o2obroker.client", "--route", self.lookup]
        _, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*route, "--app", "nope", "--key", "k", "--user", "carol", "listen"],
            env=dict(os.environ),
        )
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().strip().count("\n"), 0, err)
        self.assertIn("unknown app", err.decode())

    async def test_an_unknown_app_ends_the_client(self) -> None:
        client = RoutedClient(reactor, [self.lookup], app="nope", key="k", hello={"user": "x"})
        with self.assertRaises(LookupFailed) as e:
            await client.start()
        self.assertTrue(e.exception.final)
        self.failureResultOf(client.ended, LookupFailed)


def _turn() -> Deferred[None]:
    return deferLater(reactor, 0.01, lambda: None)


class RedirectTests(TestCase):
    timeout = 30

    async def node(self, node_id: str) -> tuple[Node, str]:
        node = Node(Config(auth="none", node=node_id), reactor)
        node.start()
        self.addCleanup(node.stop)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BinaryFactory(node.gateway)
        )
        self.addCleanup(port.stopListening)
        return node, f"127.0.0.1:{port.getHost().port}"

    async def test_a_draining_node_sends_the_device_where_its_503_says(self) -> None:
        c, c_address = await self.node("c")
        d, d_address = await self.node("d")
        c.directory = StaticDirectory([NodeInfo("c", addresses={"tcp": c_address})])
        site = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            build_site(c, reactor)
        )
        self.addCleanup(site.stopListening)
        client = RoutedClient(
            reactor,
            [f"http://127.0.0.1:{site.getHost().port}"],
            key="k",
            hello={"user": "alice", "device": "phone"},
        )
        self.addCleanup(client.stop)
        first = await client.start()
        self.assertEqual(client.node, "c")
        c.supervisor.peers = lambda: [{"node": "d", "tcp": d_address}]
        c.supervisor.drain()
        await first.closed
        self.assertEqual(first.lost.code, 503)
        await client.wait_connected()
        self.assertEqual((client.node, client.moves), ("d", 1))
        self.assertEqual(d.gateway.connections["tcp"], 1)


class BackoffTests(TestCase):
    timeout = 30

    async def test_nodes_that_refuse_connections_space_out_the_look_ups(self) -> None:
        dead = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        address = f"127.0.0.1:{dead.getHost().port}"
        await dead.stopListening()
        delays: list[int] = []
        looked = 0

        async def lookup() -> list[str]:
            nonlocal looked
            looked += 1
            return [address, address]  # the node and its standby, both gone

        client = RoutedClient(reactor, [], key="k", retry=lambda n: delays.append(n) or 0.05)
        client.lookup = lookup  # type: ignore[method-assign]
        self.addCleanup(client.stop)
        client.start().addErrback(lambda f: None)
        while len(delays) < 3:
            await _turn()
        # after each look-up whose two addresses failed: a pause, longer each time
        self.assertEqual(delays[:3], [2, 4, 6])
        self.assertLessEqual(looked, 4)
