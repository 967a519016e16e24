"""The node's log: a line per connection, hello, close and error; JSON lines; flood-safe."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.client import connect
from o2obroker.logs import Budget, json_line
from o2obroker.service.console import fingerprint
from o2obroker.session.gateway import ERROR_LINE_BURST, ERROR_LINE_EVERY
from tests.harness import Harness

TWISTD = str(Path(sys.executable).with_name("twistd"))


def connection_events(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == kind]


class ConnectionLogTests(SynchronousTestCase):
    def test_open_hello_and_close_say_who_where_how_long_and_why(self) -> None:
        h = Harness()
        with capturedLogs() as events:
            phone = h.login("alice", "phone")
            h.clock.advance(12.5)
            phone.write({"t": "bye"})
            phone.lose()
        [opened] = connection_events(events, "open")
        self.assertEqual((opened["transport"], opened["peer"]), ("tcp", "127.0.0.1:5000"))
        [hello] = connection_events(events, "hello")
        self.assertEqual((hello["user"], hello["device"]), ("alice", "phone"))
        [closed] = connection_events(events, "close")
        self.assertEqual(
            {k: closed[k] for k in ("user", "device", "transport", "peer", "reason", "duration")},
            {
                "user": "alice",
                "device": "phone",
                "transport": "tcp",
                "peer": "127.0.0.1:5000",
                "reason": "bye",
                "duration": 12.5,
            },
        )
        self.assertTrue(formatEvent(closed).endswith("alice/phone after 12.5s: bye"))

    def test_a_refused_hello_is_an_error_line_and_the_close_reason(self) -> None:
        h = Harness()
        with capturedLogs() as events:
            h.connect().write({"t": "send", "id": "1", "to": "bob", "body": 1})
        [error] = connection_events(events, "error")
        self.assertEqual((error["code"], error["user"]), (401, None))
        [closed] = connection_events(events, "close")
        self.assertEqual(closed["reason"], "401 the first frame must be hello")
        self.assertIn("before hello", formatEvent(closed))

    def test_errors_from_the_actor_are_logged_too(self) -> None:
        h = Harness()
        phone = h.login("alice")
        with capturedLogs() as events:
            phone.write({"t": "send", "id": "s1", "room": "nowhere", "body": 1})
        [error] = connection_events(events, "error")
        self.assertEqual(
            (error["code"], error["reason"], error["user"]), (404, "no such room", "alice")
        )

    def test_garbage_in_a_loop_costs_a_few_lines(self) -> None:
        h = Harness()
        phone = h.login("alice")
        with capturedLogs() as events:
            for _ in range(200):
                phone.write({"t": "nonsense"})
            h.clock.advance(ERROR_LINE_EVERY)
            phone.write({"t": "nonsense"})
            phone.lose()
        lines = connection_events(events, "error")
        self.assertEqual(len(lines), ERROR_LINE_BURST + 1)
        self.assertEqual(lines[-1]["held"], 200 - ERROR_LINE_BURST)
        self.assertIn(
            f"({200 - ERROR_LINE_BURST} earlier error lines not logged)", formatEvent(lines[-1])
        )
        [closed] = connection_events(events, "close")
        self.assertEqual((closed["errors"], closed["suppressed"]), (201, 200 - ERROR_LINE_BURST))
        self.assertIn(
            f"(201 error frames sent, {200 - ERROR_LINE_BURST} not logged)", formatEvent(closed)
        )

    def test_a_bad_client_does_not_spend_another_ones_budget(self) -> None:
        h = Harness()
        bad, good = h.login("mallory"), h.login("alice")
        with capturedLogs() as events:
            for _ in range(50):
                bad.write({"t": "nonsense"})
            good.write({"t": "nonsense"})
        alice = [e for e in connection_events(events, "error") if e["user"] == "alice"]
        self.assertEqual(len(alice), 1)


class BudgetTests(SynchronousTestCase):
    def test_burst_then_one_per_period(self) -> None:
        budget = Budget(0.0, burst=3)
        self.assertEqual([budget.take(0.0, 3, 10.0) for _ in range(5)], [True] * 3 + [False] * 2)
        self.assertEqual((budget.held, budget.suppressed), (2, 2))
        self.assertFalse(budget.take(9.0, 3, 10.0))
        self.assertTrue(budget.take(10.5, 3, 10.0))


class JSONLineTests(SynchronousTestCase):
    def test_plain_keys_are_kept_and_objects_left_out(self) -> None:
        event = {
            "log_format": "{user}/{device} via {conn!r}",
            "log_level": LogLevel.warn,
            "log_namespace": "o2obroker.x",
            "log_time": 0.25,
            "user": "alice",
            "device": "phone",
            "code": 400,
            "conn": object(),
            "_device_text": " (for the text line only)",
        }
        line = json_line(event)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        obj = json.loads(line)
        self.assertEqual(
            {k: obj[k] for k in ("time", "level", "namespace", "user", "device", "code")},
            {
                "time": "1970-01-01T00:00:00.250+00:00",
                "level": "warn",
                "namespace": "o2obroker.x",
                "user": "alice",
                "device": "phone",
                "code": 400,
            },
        )
        self.assertTrue(obj["message"].startswith("alice/phone via <object"))
        self.assertNotIn("conn", obj)
        self.assertNotIn("_device_text", obj)
        self.assertNotIn("unpersistable", line)

    def test_a_failure_is_one_line_too(self) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        obj = json.loads(json_line({"log_format": "oops", "log_failure": failure, "log_time": 0}))
        self.assertIn("ZeroDivisionError", obj["failure"])


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[Any] = Deferred()
        self._wanted: list[tuple[str, Deferred[dict[str, Any]]]] = []

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.decode().splitlines()]

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for item in list(self._wanted):
            for obj in self.lines():
                if item[0] in obj["message"]:
                    self._wanted.remove(item)
                    item[1].callback(obj)
                    break

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def wait_for(self, text: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self._wanted.append((text, d))
        self.outReceived(b"")
        return d.addTimeout(30, reactor)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class TwistdJSONTests(TestCase):
    timeout = 60

    def twistd(self, *extra: str) -> tuple[_Collect, Any]:
        proto = _Collect()
        self.workdir = Path(self.mktemp()).absolute()
        self.workdir.mkdir()
        args = [sys.executable, TWISTD, "-n", "--pidfile=", "o2obroker", "--log-format", "json"]
        args += ["--tcp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
        process = reactor.spawnProcess(
            proto, sys.executable, [*args, *extra], env=dict(os.environ), path=str(self.workdir)
        )

        def stop() -> Deferred[Any]:
            if process.pid is not None:
                process.signalProcess("TERM")
            return proto.ended

        self.addCleanup(stop)
        return proto, process

    async def test_log_format_json_under_twistd(self) -> None:
        proto, process = self.twistd()
        started = await proto.wait_for("BinaryFactory starting on")
        port = int(started["message"].rsplit(" ", 1)[1])
        endpoint = f"tcp:127.0.0.1:{port}"
        client = await connect(reactor, endpoint, user="alice", device="phone")
        await client.bye()
        closed = await proto.wait_for("closed alice/phone")
        # a second client sends a frame that is not CBOR
        raw = await clientFromString(reactor, endpoint).connect(Factory.forProtocol(Protocol))
        raw.transport.write(b"\x00\x00\x00\x03\xff\xff\xff")
        await proto.wait_for("error 400")
        raw.transport.loseConnection()
        process.signalProcess("TERM")
        # twistd shuts down cleanly, then ends by the signal it was sent
        self.assertEqual(await proto.ended, (None, 15), proto.err)
        self.assertIn("Server Shut Down.", proto.lines()[-1]["message"])
        self.assertEqual(
            {k: closed[k] for k in ("event", "user", "device", "transport", "reason")},
            {
                "event": "close",
                "user": "alice",
                "device": "phone",
                "transport": "tcp",
                "reason": "bye",
            },
        )
        lines = proto.lines()  # every line of the log is one JSON object
        [hello] = [o for o in lines if o.get("event") == "hello"]
        self.assertEqual((hello["user"], hello["device"]), ("alice", "phone"))
        self.assertRegex(hello["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertNotIn(b"unpersistable", proto.out)

    async def test_a_console_login_is_one_line(self) -> None:
        admin = keys.Key(ed25519.Ed25519PrivateKey.generate())
        key_path = Path(self.mktemp()).absolute()
        key_path.write_bytes(admin.toString("openssh"))
        key_path.chmod(0o600)
        keys_path = Path(self.mktemp()).absolute()
        keys_path.write_bytes(admin.public().toString("openssh") + b"\n")
        proto, _ = self.twistd(
            "--manhole", "tcp:0:interface=127.0.0.1", "--manhole-keys", str(keys_path)
        )
        started = await proto.wait_for("ConchFactory starting on")
        host_key = await proto.wait_for("this run's host key is")
        self.assertRegex(host_key["fp"], r"^SHA256:[A-Za-z0-9+/]{43}$")
        await proto.wait_for("node n1 started")
        before = len(proto.lines())
        port = started["message"].rsplit(" ", 1)[1]
        out, err, code = await getProcessOutputAndValue(
            "/usr/bin/ssh",
            [
                *("-F", "/dev/null", "-i", str(key_path), "-p", port, "-o", "BatchMode=yes"),
                *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
                *("-o", "LogLevel=ERROR", "admin@127.0.0.1", "broker.stats()['node']"),
            ],
            env=dict(os.environ),
        )
        self.assertEqual((out, code), (b"'n1'\n", 0), err)
        login = await proto.wait_for("console login: admin")
        self.assertEqual(login["key"], fingerprint(admin))
        # the login is the only line it left: no key-exchange, service or channel chatter
        self.maxDiff = None
        self.assertEqual(proto.lines()[before:], [login])
