"""The scale hooks for real: a command through spawnProcess, a webhook POST to a local server."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from o2obroker.actors.supervisor import (
    ALERTING,
    CommandHook,
    HookFailed,
    IHook,
    WebhookHook,
    make_hook,
)
from tests.supervisor.helpers import Rig

# Writes its stdin to the file named by argv[1], then exits with argv[2].
WRITER = (
    "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read()); sys.exit(int(sys.argv[2]))"
)


class CommandHookTests(unittest.TestCase):
    timeout = 30  # hooks here time out after a second or less: far longer is a hang

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHook, CommandHook(reactor, "scale-out --now")))

    @inlineCallbacks
    def test_command_gets_the_payload_as_json_on_stdin(self) -> Any:
        out = self.mktemp()
        hook = CommandHook(reactor, [sys.executable, "-c", WRITER, out, "0"], timeout=20)
        yield hook.fire({"event": "scale_out", "metrics": {"connections": {"tcp": 3}}})
        with open(out, encoding="utf-8") as f:
            self.assertEqual(
                json.loads(f.read()), {"event": "scale_out", "metrics": {"connections": {"tcp": 3}}}
            )

    @inlineCallbacks
    def test_exit_status_is_a_failure(self) -> Any:
        hook = CommandHook(reactor, [sys.executable, "-c", WRITER, self.mktemp(), "3"], timeout=20)
        error = yield self.assertFailure(hook.fire({}), HookFailed)
        self.assertIn("exit status 3", str(error))

    @inlineCallbacks
    def test_a_hung_command_is_killed(self) -> Any:
        # a child process that reads its input and then hangs (it is the hook, not the test)
        script = "import sys, threading; sys.stdin.read(); threading.Event().wait(60)"
        hook = CommandHook(reactor, [sys.executable, "-c", script], timeout=0.5)
        error = yield self.assertFailure(hook.fire({}), HookFailed)
        self.assertIn("killed", str(error))

    @inlineCallbacks
    def test_a_missing_command_is_a_failure(self) -> Any:
        hook = CommandHook(reactor, [self.mktemp()], timeout=20)
        yield self.assertFailure(hook.fire({}), HookFailed)

    @inlineCallbacks
    def test_a_timeout_kills_the_commands_children_too(self) -> Any:
        """A shell whose child holds its output open ends at the timeout, child and all."""
        pidfile = self.mktemp()
        hook = CommandHook(reactor, ["sh", "-c", HANG_WITH_CHILD, "sh", pidfile], timeout=1)
        error = yield self.assertFailure(hook.fire({}), HookFailed)
        self.assertIn("killed", str(error))
        with open(pidfile, encoding="utf-8") as f:
            grandchild = int(f.read())
        self.assertTrue((yield gone_within(grandchild)), f"pid {grandchild} still runs")

    @inlineCallbacks
    def test_a_child_left_behind_by_an_exited_command_is_killed_too(self) -> Any:
        """The shell exits at once; its child keeps the output open past the timeout."""
        pidfile = self.mktemp()
        hook = CommandHook(reactor, ["sh", "-c", LEAVE_CHILD, "sh", pidfile], timeout=1)
        error = yield self.assertFailure(hook.fire({}), HookFailed)
        self.assertIn("killed", str(error))
        with open(pidfile, encoding="utf-8") as f:
            self.assertTrue((yield gone_within(int(f.read()))))

    @inlineCallbacks
    def test_the_next_scale_out_runs_after_a_killed_one(self) -> Any:
        pidfile = self.mktemp()
        rig = Rig(alert_connections=10, alert_cooldown=0)
        hook = _Runs(CommandHook(reactor, ["sh", "-c", HANG_WITH_CHILD, "sh", pidfile], timeout=1))
        rig.supervisor.hooks.hooks["scale_out"] = hook
        rig.set_connections(tcp=10)
        rig.sample()
        yield hook.ended[0]
        self.assertEqual(rig.supervisor.counts["scale_out_failures"], 1)
        rig.set_connections(tcp=0)
        rig.sample(advance=5)
        rig.set_connections(tcp=10)
        rig.sample(advance=5)  # a new alert: its hook starts, nothing is left running
        self.assertEqual(rig.supervisor.state, ALERTING)
        self.assertEqual(rig.supervisor.counts["scale_out_runs"], 2)
        self.assertEqual(rig.supervisor.alerts()[-1]["hook"], "fired")
        yield hook.ended[1]

    def test_command_line_is_split_like_a_shell(self) -> None:
        hook = CommandHook(reactor, "/usr/local/bin/scale --pool 'shop a'")
        self.assertEqual(hook.argv, ["/usr/local/bin/scale", "--pool", "shop a"])
        self.assertRaises(ValueError, CommandHook, reactor, "  ")

    @inlineCallbacks
    def test_supervisor_runs_a_real_command_on_alert(self) -> Any:
        """The whole path: threshold reached, command run with the sample on stdin."""
        out = self.mktemp()
        rig = Rig(alert_connections=10)
        hook = _Notifying(CommandHook(reactor, [sys.executable, "-c", WRITER, out, "0"]))
        rig.supervisor.hooks.hooks["scale_out"] = hook
        rig.set_connections(tcp=8, lp=2)
        rig.sample(cpu=12.5, memory=40)
        yield hook.done
        with open(out, encoding="utf-8") as f:
            payload = json.loads(f.read())
        self.assertEqual(payload["event"], "scale_out")
        self.assertEqual(payload["reasons"], {"connections": [10, 10]})
        self.assertEqual(payload["metrics"]["cpu"], 12.5)
        self.assertEqual(payload["metrics"]["occupancy"], 60.0)
        self.assertEqual(payload["thresholds"]["alert_connections"], 10)


# Starts a child that keeps the shell's stdout open, writes its pid to $1, and waits.
HANG_WITH_CHILD = 'sleep 100 & echo $! > "$1"; wait'
# The same child, but the shell exits at once, leaving it behind.
LEAVE_CHILD = 'sleep 100 & echo $! > "$1"'


def gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie waiting for init)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@inlineCallbacks
def gone_within(pid: int, seconds: float = 5.0) -> Any:
    """Whether ``pid`` is gone within ``seconds``: a SIGKILL is delivered when
    the process is next scheduled, which on a busy machine is not at once."""
    for _ in range(int(seconds / 0.05)):
        if gone(pid):
            return True
        yield deferLater(reactor, 0.05, lambda: None)
    return gone(pid)


class _Runs:
    """Passes payloads to a real hook; ``ended[i]`` fires in the turn after run i ended,
    once the supervisor has seen the outcome."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.description = hook.description
        self.ended: list[Deferred[None]] = []

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        ended: Deferred[None] = Deferred()
        self.ended.append(ended)

        def end(result: Any) -> Any:
            reactor.callLater(0, ended.callback, None)
            return result

        return self.hook.fire(payload).addBoth(end)


class _Notifying:
    """Passes payloads to a real hook; ``done`` fires when its first run ends."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.description = hook.description
        self.done: Deferred[None] = Deferred()

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        def ended(result: Any) -> Any:
            self.done.callback(None)
            return result

        return self.hook.fire(payload).addBoth(ended)


class _Recorder(Resource):
    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.requests: list[tuple[bytes, bytes | None, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.requests.append((request.path, request.getHeader(b"content-type"), body))
        request.setResponseCode(self.code)
        return b"ok" if self.code < 300 else b"nope"


class WebhookHookTests(unittest.TestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHook, WebhookHook(reactor, "http://127.0.0.1:1/scale")))

    def serve(self, code: int = 200) -> tuple[_Recorder, str]:
        recorder = _Recorder(code)
        port = reactor.listenTCP(0, Site(recorder), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return recorder, f"http://127.0.0.1:{port.getHost().port}/scale"

    @inlineCallbacks
    def test_posts_json_to_the_url(self) -> Any:
        recorder, url = self.serve()
        hook = WebhookHook(reactor, url, timeout=20)
        yield hook.fire({"event": "scale_in", "node": "n1"})
        [(path, ctype, body)] = recorder.requests
        self.assertEqual(path, b"/scale")
        self.assertEqual(ctype, b"application/json")
        self.assertEqual(json.loads(body), {"event": "scale_in", "node": "n1"})

    @inlineCallbacks
    def test_non_2xx_is_a_failure(self) -> Any:
        recorder, url = self.serve(500)
        error = yield self.assertFailure(WebhookHook(reactor, url).fire({}), HookFailed)
        self.assertIn("HTTP 500", str(error))
        self.assertEqual(len(recorder.requests), 1)

    def serve_raw(self, answer: bytes | None, close: bool = True) -> tuple[list[bytes], str]:
        """A bare TCP server: reads one request, writes ``answer`` (if any) as it is,
        then closes or hangs; every connection it had is gone before the test ends."""
        requests: list[bytes] = []
        lost: list[Deferred[None]] = []

        class Raw(Protocol):
            def connectionMade(self) -> None:
                self.buffer = b""
                self.lost: Deferred[None] = Deferred()
                lost.append(self.lost)

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data
                head, sep, body = self.buffer.partition(b"\r\n\r\n")
                if not sep:
                    return
                length = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if len(body) < (length[0] if length else 0):
                    return
                requests.append(body)
                if answer is not None:
                    self.transport.write(answer)
                if close:
                    self.transport.loseConnection()

            def connectionLost(self, reason: Any) -> None:
                self.lost.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Raw), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: gatherResults(lost))
        return requests, f"http://127.0.0.1:{port.getHost().port}/scale"

    @inlineCallbacks
    def test_2xx_without_content_length_is_success(self) -> Any:
        """An HTTP/1.0 server: no Content-Length, the body ends when it closes."""
        requests, url = self.serve_raw(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nok")
        yield WebhookHook(reactor, url, timeout=20).fire({"event": "scale_out"})
        self.assertEqual([json.loads(r) for r in requests], [{"event": "scale_out"}])

    @inlineCallbacks
    def test_error_without_content_length_is_a_failure_with_its_text(self) -> Any:
        _, url = self.serve_raw(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbody, no length")
        error = yield self.assertFailure(WebhookHook(reactor, url).fire({}), HookFailed)
        self.assertEqual(str(error), "HTTP 503: body, no length")

    @inlineCallbacks
    def test_2xx_whose_body_never_ends_is_success(self) -> Any:
        """The status decides; the body is dropped, and cut off after the timeout."""
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nthe first bytes"
        requests, url = self.serve_raw(answer, close=False)
        yield WebhookHook(reactor, url, timeout=0.5).fire({"event": "scale_in"})
        self.assertEqual(len(requests), 1)

    @inlineCallbacks
    def test_no_answer_in_time_is_a_failure(self) -> Any:
        _, url = self.serve_raw(None, close=False)
        error = yield self.assertFailure(
            WebhookHook(reactor, url, timeout=0.5).fire({}), HookFailed
        )
        self.assertEqual(str(error), "no answer after 0.5s")

    def test_only_http_urls(self) -> None:
        self.assertRaises(ValueError, WebhookHook, reactor, "file:///etc/passwd")

    def test_make_hook(self) -> None:
        self.assertIsNone(make_hook(reactor, None, None))
        self.assertIsInstance(make_hook(reactor, "true", None), CommandHook)
        self.assertIsInstance(make_hook(reactor, None, "http://127.0.0.1/x"), WebhookHook)
