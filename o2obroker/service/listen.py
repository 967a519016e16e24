"""Listeners that fail to start with one line an operator can act on, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application import internet, service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from o2obroker.config import ConfigError

log = Logger()


class StartupError(Exception):
    """A service of the node cannot start (a port in use, say): the message is the whole story."""


def check_endpoint(key: str, description: str, reactor: Any) -> None:
    """Parse a server endpoint description now, so a typo is a config error, not a traceback
    at start-up. Parsing binds nothing."""
    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ConfigError(f"{key}: {description!r} is not a server endpoint ({e})") from None


#: the listen backlog of a TCP or TLS port whose description names none.
#: Twisted's 50 is too small for a broker: when a node dies its clients all
#: say hello to their standby at once, and connections past the backlog wait
#: for TCP's one-second retry. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=LISTEN_BACKLOG`` added to a ``tcp``,
    ``tcp6`` or ``ssl`` endpoint that names no backlog of its own."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


class Listener(internet.StreamServerEndpointService):
    """A listening port named after its config key; a failed bind raises StartupError."""

    _raiseSynchronously = True

    def __init__(
        self, key: str, description: str, factory: Any, reactor: Any, name: str | None = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(serverFromString(reactor, with_backlog(description)), factory)
        self.key = key
        self.description = description
        self.setName(name or key)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise StartupError(
                f"{self.key}: cannot listen on {self.description}: {reason.lower()}"
            ) from None


def exit_with(message: str) -> NoReturn:
    """Tell the operator on the process's own stderr (twistd sends ``sys.stderr`` to the
    log) and exit non-zero."""
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"o2obroker: {message}\n")
    stderr.flush()
    raise SystemExit(1)


class NodeTree(service.MultiService):
    """The top of a node's service tree: a child that cannot start stops the process
    with one line on stderr (and in the log) and exit status 1.

    ``twistd`` is twistd's own options when it runs the node: its pid file is
    removed on that exit (twistd removes it only after a reactor run), and a
    daemon's failure goes to twistd, which tells the waiting parent process.
    ``log_observer``, when set, becomes the application's log observer (twistd's
    ``--log-format``). ``before_stop``, when set, runs first when the tree stops,
    its services still running (the node's graceful stop drains there).
    """

    def __init__(self, twistd: Any = None) -> None:
        super().__init__()
        self.twistd = twistd
        self.log_observer: ILogObserver | None = None
        self.before_stop: Callable[[], Deferred[object]] | None = None

    def stopService(self) -> Deferred[object]:
        before, self.before_stop = self.before_stop, None
        if before is None or not self.running:
            return super().stopService()
        d = maybeDeferred(before)
        d.addErrback(lambda f: log.failure("before the stop", f))
        return d.addCallback(lambda _: super(NodeTree, self).stopService())

    def setServiceParent(self, parent: Any) -> None:
        # twistd makes the application after makeService and logs to the ILogObserver
        # it carries, if any: the way a plugin chooses its log format
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            log.critical("cannot start: {error}", error=str(e))
            twistd = self.twistd
            if twistd is not None and twistd.get("statusPipe") is not None:
                # a daemon: twistd writes the error to the parent still waiting on the
                # terminal ("An error has occurred: ..."), removes its pid file, exits 1
                raise
            self._remove_pidfile(twistd.get("pidfile") if twistd is not None else None)
            exit_with(str(e))

    @staticmethod
    def _remove_pidfile(pidfile: str | None) -> None:
        if not pidfile:
            return
        try:
            with open(pidfile, encoding="ascii") as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.remove(pidfile)
        except (OSError, ValueError):
            pass
