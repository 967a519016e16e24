"""Scale hooks: a command or a webhook behind one small interface, ``IHook``.

``HookRunner`` is what the supervisor uses: it runs the hook configured for
an event with a JSON payload, never two runs of the same event at once, and
counts and reports the failures. Both kinds of hook are bounded in time: a
command is killed with its whole process group, a webhook's request is
cancelled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from zope.interface import Attribute, Interface, implementer

from o2obroker.httpbody import BytesBody


class IHook(Interface):
    """Something outside the node that adds or removes capacity."""

    description = Attribute("What it runs, for logs and the console.")

    def fire(payload: dict[str, Any]) -> Deferred[None]:
        """Hand the payload over; fire when done, fail when the hook failed."""


class HookFailed(Exception):
    """A hook ran but did not succeed (exit status, HTTP status, timeout)."""


# -- command hooks -------------------------------------------------------------

# Runs argv[1:] as the leader of a new session and process group, so that a
# timeout can kill the command together with everything it started. The
# process keeps its pid (exec, no fork): the group's id is the pid the reactor
# reports. Twisted's spawnProcess has no preexec hook, hence this wrapper.
_SETSID = (
    "import os, sys\n"
    "os.setsid()\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    sys.exit(f'cannot run {sys.argv[1]}: {e.strerror}')\n"
)


class _CommandProtocol(ProcessProtocol):
    def __init__(self, stdin: bytes, done: Deferred[None]) -> None:
        self._stdin = stdin
        self._done = done
        self.output = bytearray()
        self.killed: str | None = None  # why, when the hook killed it

    def connectionMade(self) -> None:
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self.output) < 4096:
            self.output += data[: 4096 - len(self.output)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        if self.killed is not None:
            self._done.errback(HookFailed(self.killed))
        elif code == 0:
            self._done.callback(None)
        else:
            text = bytes(self.output).decode("utf-8", "replace").strip()
            self._done.errback(HookFailed(f"exit status {code}: {text[-500:]}"))


@implementer(IHook)
class CommandHook:
    """Runs a command with the payload as JSON on its stdin, through spawnProcess.

    The command is split like a shell would (no shell runs it) and inherits the
    node's environment. It runs in its own process group, and after
    ``timeout`` seconds the whole group is killed: a shell script's children
    (``sh -c "scale; sleep 100"``) go with it, so the hook ends on time and the
    next scale-out is not held back. The returned Deferred fires once the
    process has ended and its output is closed, never before.
    """

    def __init__(self, reactor: Any, command: str | list[str], timeout: float = 30.0) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("empty hook command")
        self.description = shlex.join(self.argv)
        self._reactor = reactor
        self.timeout = timeout

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        proto = _CommandProtocol(json.dumps(payload).encode() + b"\n", done)
        argv = [sys.executable, "-c", _SETSID, *self.argv]
        try:
            process = self._reactor.spawnProcess(proto, argv[0], argv, env=None)
        except Exception as e:
            return fail(HookFailed(f"cannot start {self.argv[0]}: {e}"))

        # the group's id is the leader's pid, taken now: the reactor forgets the pid
        # once the leader is reaped, and its children may still hold the output open
        group = process.pid

        def kill() -> None:
            proto.killed = f"no exit after {self.timeout:g}s: killed"
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

        timer = self._reactor.callLater(self.timeout, kill)

        def cancel(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(cancel)


# -- webhooks ---------------------------------------------------------------------


class _Answer(Protocol):
    """Reads a response body to its end, keeping its first bytes for the log.

    However the body ends (Content-Length reached, chunked end, or the server
    closing the connection, as HTTP/1.0 servers do) counts as the end.
    """

    KEEP = 500

    def __init__(self) -> None:
        self.head = bytearray()
        self.ended: Deferred[bytes] = Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        if len(self.head) < self.KEEP:
            self.head += data[: self.KEEP - len(self.head)]

    def connectionLost(self, reason: Failure) -> None:
        if not self.ended.called:
            self.ended.callback(bytes(self.head))


@implementer(IHook)
class WebhookHook:
    """POSTs the payload as JSON to a URL; the status code decides: 2xx is success.

    A 2xx succeeds as soon as its status line arrives; its body is read and
    dropped in the background (for at most ``timeout`` seconds), so neither
    its framing nor its pace can fail the hook. Any other status fails it,
    with the first 500 bytes of its body as the reason.
    """

    def __init__(self, reactor: Any, url: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://, not {url!r}")
        self.url = url
        self.description = f"POST {url}"
        self._reactor = reactor
        self._agent = Agent(reactor)
        self.timeout = timeout

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        headers = Headers({b"content-type": [b"application/json"]})
        body = BytesBody(json.dumps(payload).encode())
        d = self._agent.request(b"POST", self.url.encode(), headers, body)

        def answered(response: Any) -> Deferred[None] | None:
            answer = _Answer()
            response.deliverBody(answer)
            if 200 <= response.code < 300:
                self._drop(answer)
                return None

            def refused(head: bytes) -> None:
                text = head.decode("utf-8", "replace")
                raise HookFailed(f"HTTP {response.code}: {text}")

            return answer.ended.addCallback(refused)

        d.addCallback(answered)
        late: list[bool] = []

        def expire() -> None:
            late.append(True)
            d.cancel()  # the agent fails it as ResponseNeverReceived or ResponseFailed

        timer = self._reactor.callLater(self.timeout, expire)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if late and isinstance(result, Failure):
                raise HookFailed(f"no answer after {self.timeout:g}s")
            return result

        return d.addBoth(settle)

    def _drop(self, answer: _Answer) -> None:
        """Let the rest of a body arrive and go, giving up on it after the timeout."""
        timer = self._reactor.callLater(self.timeout, answer.ended.cancel)
        answer.ended.addBoth(lambda _: timer.cancel() if timer.active() else None)


def make_hook(
    reactor: Any, command: str | None, url: str | None, timeout: float = 30.0
) -> IHook | None:
    """The hook a config asks for: a command, a webhook, or none."""
    if command:
        return CommandHook(reactor, command, timeout)
    if url:
        return WebhookHook(reactor, url, timeout)
    return None


# -- running them ---------------------------------------------------------------------


class HookRunner:
    """Runs the hook of an event (``scale_out``, ``scale_in``), one run at a time each.

    ``failed(event, message)`` is told of every failed run, after it is
    counted and logged.
    """

    log = Logger()

    def __init__(
        self,
        hooks: dict[str, IHook | None],
        *,
        counts: Counter[str] | None = None,
        failed: Callable[[str, str], None] = lambda event, why: None,
    ) -> None:
        self.hooks = hooks
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.failed = failed
        self.running: dict[str, Deferred[None]] = {}

    def run(self, event: str, payload: dict[str, Any]) -> str:
        """Start the event's hook; say what became of it: fired, still running, none."""
        hook = self.hooks.get(event)
        if hook is None:
            return "none configured"
        if event in self.running:
            self.log.warn("{event} hook still running: not started again", event=event)
            return "still running: not started again"
        self.counts[f"{event}_runs"] += 1
        self.log.info("{event}: running {hook}", event=event, hook=hook.description)
        d = self.running[event] = hook.fire(payload)

        def failed(f: Failure) -> None:
            why = f.getErrorMessage()
            self.counts[f"{event}_failures"] += 1
            self.log.error("{event} hook failed: {why}", event=event, why=why)
            self.failed(event, why)

        def done(_: object) -> None:
            self.running.pop(event, None)

        d.addErrback(failed).addBoth(done)
        return "fired"
