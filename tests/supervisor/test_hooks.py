"""The scale hooks for real: a command through spawnProcess, a webhook POST to a local server."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from o2obroker.actors.supervisor import CommandHook, HookFailed, WebhookHook, make_hook
from tests.supervisor.helpers import Rig

# Writes its stdin to the file named by argv[1], then exits with argv[2].
WRITER = (
    "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read()); sys.exit(int(sys.argv[2]))"
)


class CommandHookTests(unittest.TestCase):
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

    def test_only_http_urls(self) -> None:
        self.assertRaises(ValueError, WebhookHook, reactor, "file:///etc/passwd")

    def test_make_hook(self) -> None:
        self.assertIsNone(make_hook(reactor, None, None))
        self.assertIsInstance(make_hook(reactor, "true", None), CommandHook)
        self.assertIsInstance(make_hook(reactor, None, "http://127.0.0.1/x"), WebhookHook)
