"""/metrics after real traffic on loopback: traffic by transport, connections, latency, process."""

from __future__ import annotations

import json
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.client import connect
from o2obroker.config import Config
from o2obroker.metrics import Latency
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import encode_cbor, frame
from tests.harness import Harness


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class ScrapeTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.node = Node(Config(), reactor)
        self.node.start()
        self.addCleanup(self.node.stop)
        self.http = reactor.listenTCP(0, build_site(self.node, reactor), interface="127.0.0.1")
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.addCleanup(self.tcp.stopListening)
        self.base = f"http://127.0.0.1:{self.http.getHost().port}"
        self.endpoint = f"tcp:127.0.0.1:{self.tcp.getHost().port}"

    async def until(self, check: Any) -> None:
        for _ in range(100):
            if check():
                return
            await deferLater(reactor, 0.02)
        self.fail("the node never got there")

    async def test_scrape_after_traffic(self) -> None:
        gateway = self.node.gateway
        bob = await connect(reactor, self.endpoint, user="bob", device="phone", auto_ack=False)
        self.addCleanup(bob.transport.loseConnection)
        alice = await connect(reactor, self.endpoint, user="alice", device="phone")
        for i in range(3):
            receipt = await alice.send({"i": i}, to="bob")
            self.assertEqual(receipt["status"], "delivered")
        for _ in range(3):
            await bob.messages.get()
        await alice.bye()
        # a client whose first frame is not a hello is refused (401)
        bad = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port), Protocol()
        )
        bad.transport.write(frame(encode_cbor({"t": "ping"})))
        r = await treq.post(
            self.base + "/lp/open",
            json.dumps({"t": "hello", "user": "carol"}).encode(),
            persistent=False,
        )
        self.assertEqual(r.code, 200)
        await r.content()
        await self.until(lambda: gateway.connections["tcp"] == 1)

        r = await treq.get(self.base + "/metrics", persistent=False)
        self.assertEqual(r.code, 200)
        got = samples((await r.content()).decode())

        def value(name: str, **labels: str) -> float:
            return got[(name, tuple(sorted(labels.items())))]

        # alice: hello, 3 sends, bye; bob: hello (no acks); the refused one: ping
        self.assertEqual(value("o2o_frames_in_total", transport="tcp"), 7)
        # alice: welcome, 3 receipts, bye; bob: welcome, 3 msgs; the refused one: error
        self.assertEqual(value("o2o_frames_out_total", transport="tcp"), 10)
        self.assertGreater(value("o2o_bytes_in_total", transport="tcp"), 7 * 5)
        self.assertGreater(value("o2o_bytes_out_total", transport="tcp"), 10 * 5)
        self.assertEqual(value("o2o_frames_in_total", transport="lp"), 1)
        self.assertEqual(value("o2o_frames_out_total", transport="lp"), 1)  # the welcome
        self.assertEqual(value("o2o_frames_in_total", transport="ws"), 0)
        self.assertEqual(value("o2o_connections_opened_total", transport="tcp"), 3)
        self.assertEqual(value("o2o_connections_opened_total", transport="lp"), 1)
        self.assertEqual(value("o2o_connections_closed_total", reason="bye"), 1)
        self.assertEqual(value("o2o_connections_refused_total", reason="401"), 1)
        batches = value("o2o_send_to_write_seconds_count")
        self.assertTrue(1 <= batches <= 3, batches)
        self.assertEqual(value("o2o_send_to_write_seconds_bucket", le="+Inf"), batches)
        self.assertLess(value("o2o_send_to_write_seconds_sum"), 5.0)
        self.assertGreater(value("process_open_fds"), 3)
        self.assertGreater(value("process_max_fds"), value("process_open_fds"))


class LatencyTests(SynchronousTestCase):
    def latency(self, h: Harness) -> tuple[float, float]:
        found = samples(h.node.metrics.render().decode())
        return found[("o2o_send_to_write_seconds_count", ())], found[
            ("o2o_send_to_write_seconds_sum", ())
        ]

    def test_only_live_deliveries_are_timed(self) -> None:
        h = Harness()
        alice = h.login("alice")
        alice.write({"t": "send", "id": "1", "to": "bob", "body": 1})
        h.clock.advance(3600)
        bob = h.login("bob")  # the stored message waited an hour for bob: not a latency
        self.assertEqual([f["t"] for f in bob.read()], ["welcome", "msg"])
        self.assertEqual(self.latency(h), (0, 0))
        alice.write({"t": "send", "id": "2", "to": "bob", "body": 2})
        self.assertEqual([f["t"] for f in bob.read()], ["msg"])
        self.assertEqual(self.latency(h), (1, 0))


class ErrorCountTests(SynchronousTestCase):
    def test_every_error_frame_is_counted_by_code(self) -> None:
        # the answers of actors (404 no such room, 403 not a member) and the 409
        # of a replaced connection count like the session's own 400s
        h = Harness()
        alice = h.login("alice")
        alice.write({"t": "send", "id": "1", "room": "nobody", "body": 1})
        alice.write({"t": "ack", "seq": -1})
        h.login("bob").write({"t": "join", "room": "r"})
        alice.write({"t": "send", "id": "2", "room": "r", "body": 1})
        h.login("alice")
        self.assertEqual(
            [f["code"] for f in alice.read() if f["t"] == "error"], [404, 400, 403, 409]
        )
        found = samples(h.node.metrics.render().decode())
        self.assertEqual(
            {
                code: found[("o2o_errors_total", (("code", code),))]
                for code in ("400", "403", "404", "409")
            },
            {"400": 1, "403": 1, "404": 1, "409": 1},
        )


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_cumulative_and_bounds_inclusive(self) -> None:
        latency = Latency((0.01, 0.1))
        for value in (0.005, 0.01, 0.05, 3.0):
            latency.observe(value)
        family = latency.family("x_seconds", "doc")
        got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        self.assertEqual(got[("x_seconds_bucket", "0.01")], 2)  # le: 0.01 itself counts
        self.assertEqual(got[("x_seconds_bucket", "0.1")], 3)
        self.assertEqual(got[("x_seconds_bucket", "+Inf")], 4)
        self.assertEqual(got[("x_seconds_count", None)], 4)
        self.assertAlmostEqual(got[("x_seconds_sum", None)], 3.065)
