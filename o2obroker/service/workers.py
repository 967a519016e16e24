"""A node of N worker processes on one machine, sharing its ports (doc/design.md).

The node process becomes a small parent: it binds each listening port once
per worker, as a group of ``SO_REUSEPORT`` sockets, and starts N
``twistd o2obroker`` workers, each handed its own socket of each port as fd 3
(binary TCP) and fd 4 (HTTP). The kernel spreads new connections over the
group evenly; the sockets live in the parent, so a worker that dies loses
no port and no queued connection, and its successor adopts the same socket.
Each worker is a node of the registry (``<node>.w<i>``) with an internal HTTP
port of its own, which is where other nodes and workers forward long-polls.

``twisted.runner.procmon.ProcessMonitor`` restarts a worker that dies, with
backoff, and stops them all with the node. A worker's fd 0 is a pipe whose
other end only the parent holds: it reads end-of-file when the parent is
gone, however it went (``kill -9`` included), and the worker stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import fdesc
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IProcessProtocol,
    IReactorProcess,
    IReactorTime,
    IReadDescriptor,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from o2obroker.config import Config
from o2obroker.service.listen import LISTEN_BACKLOG, StartupError
from o2obroker.service.stop import KILL_TIME, STOP_SIGNALS

#: where a worker finds its listening sockets; its fd 0 is the pipe from the parent
TCP_FD = 3
HTTP_FD = 4
#: the ports a worker adopts, by config key, and the fd each arrives on
SHARED = {"tcp": TCP_FD, "http": HTTP_FD}

log = Logger()


def worker_id(node: str, index: int) -> str:
    """The registry id of worker ``index`` of node ``node``."""
    return f"{node}.w{index}"


# -- endpoints -----------------------------------------------------------------


def _split(description: str) -> list[str]:
    """A server endpoint description's parts, ``\\:`` kept as a colon."""
    return [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]


def tcp_address(description: str) -> tuple[socket.AddressFamily, str, int, int]:
    """``tcp:PORT[:interface=H][:backlog=B]`` (or ``tcp6:``) as (family, host, port, backlog),
    with a node's defaults: every interface, backlog ``LISTEN_BACKLOG``."""
    parts = _split(description)
    family = socket.AF_INET6 if parts[0].lower() == "tcp6" else socket.AF_INET
    host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    port, backlog = None, LISTEN_BACKLOG
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            port = int(key)
        elif key == "port":
            port = int(value)
        elif key == "interface":
            host = value
        elif key == "backlog":
            backlog = int(value)
    if port is None:
        raise ValueError(f"{description!r} names no port")
    return family, host, port, backlog


def shift_port(description: str, offset: int) -> str:
    """The endpoint ``description`` with its port moved up by ``offset`` (a worker's
    console); a ``unix:`` socket's path gets ``.w<offset>`` instead, from 1 up."""
    parts = re.split(r"(?<!\\):", description)  # a ``\:`` inside a value stays put
    if parts[0].lower() == "unix" and len(parts) > 1 and offset:
        path = parts[1]
        key, eq, value = path.partition("=")
        parts[1] = f"{key}={value}.w{offset}" if eq and key == "address" else f"{path}.w{offset}"
        return ":".join(parts)
    for i, part in enumerate(parts[1:], 1):
        key, eq, value = part.partition("=")
        if not eq and key.isdigit():
            parts[i] = str(int(key) + offset)
            break
        if key == "port" and value.isdigit():
            parts[i] = f"port={int(value) + offset}"
            break
    return ":".join(parts)


def bind_group(key: str, description: str, count: int) -> list[socket.socket]:
    """``count`` listening sockets on the one address of ``description``, each
    bound with ``SO_REUSEPORT``, non-blocking; StartupError when it is taken.

    A plain bind comes first: it fails while anyone holds the address, a
    ``SO_REUSEPORT`` group included, so that a second node started on the same
    port by mistake is refused instead of silently sharing the traffic. Port 0
    picks one free port for the whole group.
    """
    family, host, port, backlog = tcp_address(description)
    group: list[socket.socket] = []
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            group.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(backlog)
            s.setblocking(False)
    except OSError as e:
        for s in group:
            s.close()
        reason = (e.strerror or str(e)).lower()
        raise StartupError(f"{key}: cannot listen on {description}: {reason}") from None
    return group


# -- the parent ----------------------------------------------------------------


class _Reported(ProcessProtocol):
    """ProcessMonitor's protocol for one worker, and a word to ``ended`` when it ends."""

    def __init__(self, inner: Any, ended: Callable[[str, Failure], None]) -> None:
        self.inner = inner
        self.ended = ended

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.inner.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.inner.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        self.inner.childConnectionLost(childFD)

    def processExited(self, reason: Failure) -> None:
        self.inner.processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.inner.processEnded(reason)  # ProcessMonitor schedules the restart
        self.ended(self.inner.name, reason)


@implementer(IReactorProcess, IReactorTime)
class _Spawner:
    """The reactor as the ProcessMonitor sees it: every process it spawns gets
    its worker's sockets and the parent pipe (``childFDs``), which
    ``ProcessMonitor.addProcess`` has no way to say."""

    def __init__(
        self,
        reactor: Any,
        fds: Callable[[str], dict[int, int]],
        ended: Callable[[str, Failure], None],
    ) -> None:
        self.reactor = reactor
        self.fds = fds
        self.ended = ended

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, int | str] | None = None,
    ) -> Any:
        name = processProtocol.name  # type: ignore[attr-defined]
        # 0: the parent pipe (we write nothing; the worker reads EOF when we die)
        child: dict[int, int | str] = {0: "w", 1: "r", 2: "r", **self.fds(name)}
        return self.reactor.spawnProcess(
            _Reported(processProtocol, self.ended),
            executable,
            args,
            env=env,
            path=path,
            uid=uid,
            gid=gid,
            childFDs=child,
        )

    def seconds(self) -> float:
        return self.reactor.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        return self.reactor.callLater(delay, f, *a, **kw)

    def getDelayedCalls(self) -> Any:
        return self.reactor.getDelayedCalls()


def _why(reason: Failure) -> str:
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum is not None:
        return f"killed by signal {signum}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


class Workers(ProcessMonitor):
    """The parent of a node's workers: binds the shared ports, starts a worker
    per index, restarts the ones that die, and stops them all with itself.

    ``argv(i)`` is worker ``i``'s command line. ``listen`` maps a config key
    (``tcp``, ``http``) to its endpoint description.
    """

    #: a worker that lived less than this many seconds waits twice as long as
    #: last time before it is started again (from ``minRestartDelay`` up)
    threshold = 10
    minRestartDelay = 1
    maxRestartDelay = 60
    #: seconds a worker has after SIGTERM before SIGKILL
    killTime = KILL_TIME
    #: the workers' graceful stop (``stop_drain``): while they drain, a second
    #: SIGTERM or SIGINT to the parent is passed on, and stops them at once
    stop_drain: float = 0

    def __init__(
        self,
        node: str,
        count: int,
        argv: Callable[[int], list[str]],
        listen: dict[str, str],
        reactor: Any,
        *,
        env: dict[str, str] | None = None,
        signals: bool = True,
    ) -> None:
        super().__init__(_Spawner(reactor, self._fds, self._ended))
        self.reactor = reactor
        self.signals = signals
        self._old_hup: Any = None
        self.setName("workers")
        self.node = node
        self.count = count
        self.listen = listen
        self.sockets: dict[str, list[socket.socket]] = {}
        self._index = {worker_id(node, i): i for i in range(count)}
        self._waiting: dict[str, Deferred[None]] = {}
        for i in range(count):
            # the parent's environment: ProcessMonitor's default is an empty one
            self.addProcess(
                worker_id(node, i), argv(i), env=dict(os.environ if env is None else env)
            )

    def privilegedStartService(self) -> None:
        for key, description in self.listen.items():
            self.sockets[key] = bind_group(key, description, self.count)
        super().privilegedStartService()

    def startService(self) -> None:
        ports = ", ".join(f"{k} port {s[0].getsockname()[1]}" for k, s in self.sockets.items())
        self.log.info(
            "node {node}: starting {n} workers on {ports}",
            node=self.node,
            n=self.count,
            ports=ports,
        )
        super().startService()
        if self.signals and hasattr(signal, "SIGHUP"):
            # as a node of one process reloads on SIGHUP (twistd's default would end us)
            self._old_hup = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.hangup)
            )

    def hangup(self) -> None:
        """SIGHUP: pass it on to every worker, which reads its keyword lists again."""
        self._signal_all("HUP")

    def terminate_again(self) -> None:
        """A second stop signal while the workers drain: they stop at once."""
        self.log.warn("node {node}: stop signal again, passed on", node=self.node)
        self._signal_all("TERM")

    def _signal_all(self, name: str) -> None:
        for proto in list(self.protocols.values()):
            with contextlib.suppress(ProcessExitedAlready):
                proto.transport.signalProcess(name)

    def _fds(self, name: str) -> dict[int, int]:
        i = self._index[name]
        return {fd: self.sockets[key][i].fileno() for key, fd in SHARED.items()}

    def _ended(self, name: str, reason: Failure) -> None:
        waiting = self._waiting.pop(name, None)
        if waiting is not None:
            waiting.callback(None)
        restart = self.restart.get(name)
        if self.running and restart is not None and restart.active():
            delay = max(0.0, restart.getTime() - self._clock.seconds())
            self.log.warn(
                "worker {name} exited ({why}): restarting in {delay:g} s",
                name=name,
                why=_why(reason),
                delay=delay,
            )

    def stopService(self) -> Deferred[object]:
        """SIGTERM to every worker (SIGKILL after ``killTime``); fires once all
        have ended, then closes the shared sockets."""
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        running = list(self.protocols)
        ended = [self._waiting.setdefault(name, Deferred()) for name in running]
        super().stopService()
        d: Deferred[Any] = DeferredList(ended) if ended else succeed(None)
        old: dict[int, Any] = {}
        if self.signals and self.stop_drain > 0 and not d.called:
            # Twisted would only log ReactorNotRunning on a second signal
            for signum in STOP_SIGNALS:
                old[signum] = signal.signal(
                    signum, lambda *_: self.reactor.callFromThread(self.terminate_again)
                )

        def close(_: object) -> None:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            for group in self.sockets.values():
                for s in group:
                    s.close()
            self.sockets = {}
            self.log.info("node {node}: every worker has stopped", node=self.node)

        return d.addCallback(close)


def worker_argv(
    given: dict[str, Any], names: Sequence[str], index: int, executable: str | None = None
) -> list[str]:
    """The command line of worker ``index``: ``twistd -n o2obroker`` with the
    options the node was given (``given``, by option name, for ``names``) and
    ``--worker index``."""
    argv = [
        executable or sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        "o2obroker",
    ]
    for name in names:
        value = given.get(name)
        if value is None or name == "worker":
            continue
        if name == "config":
            value = os.path.abspath(value)  # the same file, whatever the worker's directory
        argv += [f"--{name}", str(value)]
    return [*argv, "--worker", str(index)]


# -- a worker --------------------------------------------------------------------


def _share(limit: int, count: int) -> int:
    return math.ceil(limit / count) if limit else 0


def worker_config(config: Config, index: int) -> Config:
    """What worker ``index`` of ``config.workers`` runs with: its own node id,
    its share of the node's connection limits, its own console port (the
    node's + index), and the scale hooks on worker 0 only (one run per node)."""
    n = config.workers
    changes: dict[str, Any] = {
        "node": worker_id(config.node, index),
        "alert_connections": _share(config.alert_connections, n),
        "hard_connections": _share(config.hard_connections, n),
        "scale_in_connections": _share(config.scale_in_connections, n),
        "advice_min_connections": _share(config.advice_min_connections, n),
    }
    for key in ("manhole", "manhole_telnet"):
        if getattr(config, key):
            changes[key] = shift_port(getattr(config, key), index)
    if index:
        changes.update(
            scale_out_command=None, scale_out_url=None, scale_in_command=None, scale_in_url=None
        )
    return dataclasses.replace(config, **changes)


class _Listening(service.Service):
    """A service holding one listening port, which it closes when stopped."""

    port: Any = None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class AdoptedPort(_Listening):
    """A listening socket the parent made, adopted from fd ``fd``; ``on_port``
    is told the port once it listens."""

    def __init__(
        self, key: str, fd: int, factory: Any, reactor: Any, on_port: Callable[[int], None]
    ) -> None:
        self.key = key
        self.fd = fd
        self.factory = factory
        self.reactor = reactor
        self.on_port = on_port
        self.setName(key)

    def privilegedStartService(self) -> None:
        try:
            family = socket.socket(fileno=os.dup(self.fd))
        except OSError as e:
            raise StartupError(f"{self.key}: no listening socket on fd {self.fd}: {e}") from None
        with family:
            kind = family.family
        fdesc.setNonBlocking(self.fd)
        self.port = self.reactor.adoptStreamPort(self.fd, kind, self.factory)
        os.close(self.fd)  # the port holds its own copy
        self.on_port(self.port.getHost().port)
        super().privilegedStartService()


class InternalPort(_Listening):
    """A worker's own HTTP port (an ephemeral one, on the interface of the
    shared HTTP port): the address other nodes forward its long-polls to."""

    def __init__(self, http: str, site: Any, reactor: Any, on_port: Callable[[int], None]) -> None:
        _, self.interface, _, _ = tcp_address(http)
        self.site = site
        self.reactor = reactor
        self.on_port = on_port
        self.setName("http-internal")

    def privilegedStartService(self) -> None:
        self.port = self.reactor.listenTCP(0, self.site, interface=self.interface)
        self.on_port(self.port.getHost().port)
        super().privilegedStartService()


@implementer(IReadDescriptor)
class ParentWatch:
    """Reads a worker's end of the parent pipe: end-of-file means the parent
    is gone (it never writes), and ``gone`` is called once."""

    def __init__(self, reactor: Any, gone: Callable[[], object], fd: int = 0) -> None:
        self.reactor = reactor
        self._gone = gone
        self.fd = fd
        self.done = False

    def start(self) -> None:
        fdesc.setNonBlocking(self.fd)
        self.reactor.addReader(self)

    def stop(self) -> None:
        self.reactor.removeReader(self)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            self.gone()

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports the hang-up itself, without a read: the same news
        self.gone()

    def gone(self) -> None:
        if not self.done:
            self.done = True
            self._gone()

    def logPrefix(self) -> str:
        return "parent-pipe"


class ParentWatchService(service.Service):
    """Stops the worker's reactor when the parent is gone."""

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.watch = ParentWatch(reactor, self._gone, fd)

    def startService(self) -> None:
        super().startService()
        self.watch.start()

    def stopService(self) -> None:
        super().stopService()
        self.watch.stop()

    def _gone(self) -> None:
        log.warn("the node's parent process is gone: this worker stops")
        self.reactor.stop()


def add_worker_ports(
    top: service.MultiService, node: Any, binary: Any, site: Any, reactor: Any
) -> None:
    """A worker's ports: the node's shared ones adopted from its parent (their
    ports become the node's client addresses), its own internal HTTP port (the
    ``http`` address of its registry record), and the pipe that tells it the
    parent is gone."""
    host = node.config.public_host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host

    def tcp(port: int) -> None:
        node.tcp_port = port

    def http(port: int) -> None:
        node.http_port = port

    def internal(port: int) -> None:
        node.internal_http = f"http://{host}:{port}"

    AdoptedPort("tcp", TCP_FD, binary, reactor, tcp).setServiceParent(top)
    AdoptedPort("http", HTTP_FD, site, reactor, http).setServiceParent(top)
    InternalPort(node.config.http, site, reactor, internal).setServiceParent(top)
    ParentWatchService(reactor).setServiceParent(top)
