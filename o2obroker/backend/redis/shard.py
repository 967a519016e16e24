"""One Redis server: one ordered connection, kept up by ClientService, calls that never park.

txredisapi parks a command issued while it has no connection until one comes
back, however long that takes; a shard instead fails such a call at once with
BackendUnavailable, so a Redis outage costs callers an error, not memory.
Every call has a timeout; a call that times out closes the connection (it may
be half-open, and a command in flight may or may not have run), and
ClientService reconnects with backoff. AUTH and SELECT failures, which make
txredisapi's own factory stop reconnecting for good, are retried the same way.

The shard's state is declared in ``TRANSITIONS``: each change is logged once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet import error as net_error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.defer import TimeoutError as CallTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from o2obroker.backend.interface import BackendUnavailable, StoreFull
from o2obroker.backend.redis.scripts import Script
from o2obroker.backend.redis.url import RedisTarget

# state -> states it may go to, with what the log says on the way
TRANSITIONS: dict[str, dict[str, str | None]] = {
    "idle": {"connecting": None, "stopped": None},
    "connecting": {
        "ready": "redis {name}: connected",
        "down": "redis {name}: cannot connect ({why}); calls fail at once, retrying with backoff",
        "stopped": None,
    },
    "ready": {
        "down": "redis {name}: connection lost ({why}); calls fail at once, reconnecting",
        "stopped": None,
    },
    "down": {"ready": "redis {name}: connected{again}", "stopped": None},
    "stopped": {},
}


class _Protocol(txredisapi.HiredisProtocol):
    """Parses replies with hiredis, and remembers why its connection ended.

    txredisapi's pure-Python parser takes a reactor turn for every bulk
    string of a reply (``setLineMode`` schedules the rest with callLater): a
    page of 100 inbox entries would be 500 turns. hiredis parses a reply in one.
    """

    lost_reason: Failure | None = None

    def tryConvertData(self, data: Any) -> Any:
        # with charset=None and convertNumbers=False txredisapi returns replies
        # unchanged, but only after copying every list of them, element by element
        return data

    def connectionLost(self, why: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost_reason = why
        super().connectionLost(why)


class _Factory(Factory):
    """Builds txredisapi protocols for a shard's ClientService.

    The protocol calls ``stopTrying`` and ``connectionError`` when AUTH or
    SELECT fail; here that only records why, and ClientService retries.
    """

    noisy = False
    isLazy = False  # read by the protocol: do not log the AUTH failure, we do

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    def buildProtocol(self, addr: Any) -> _Protocol:
        t = self.shard.target
        p = _Protocol(
            charset=None,
            convertNumbers=False,
            password=t.password,
            username=t.username,
            dbid=t.db or None,
        )
        p.factory = self
        return p

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        if not self.shard.login_aborted:  # our abort, not the server's refusal
            self.shard.refused = why


def make_endpoint(reactor: Any, target: RedisTarget, ca: str | None, timeout: float) -> Any:
    """TCP, or TLS verified against ``ca`` (a PEM file) or the system's trust store."""
    endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    if not target.tls:
        return endpoint
    if ca:
        with open(ca, "rb") as f:
            pem = f.read()
        # a bundle may hold several CAs: trust each of them
        end = b"-----END CERTIFICATE-----"
        blocks = [b + end for b in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
        trust = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    else:
        trust = platformTrust()
    return wrapClientTLS(optionsForClientTLS(target.host, trustRoot=trust), endpoint)


class Shard:
    """Calls to one Redis server over one connection, so their order is kept."""

    log = Logger()

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,  # IReactorTCP and IReactorTime: connections, timeouts, backoff
        scripts: Sequence[Script],
        *,
        timeout: float = 5.0,
        ca: str | None = None,
    ) -> None:
        self.target = target
        self.name = target.name
        self.timeout = timeout
        self._reactor: Any = reactor
        self._scripts = {s.sha: s for s in scripts}
        self._conn: _Protocol | None = None
        self.state = "idle"
        #: why the last login failed (AUTH or SELECT), until one succeeds
        self.refused: str | None = None
        # connections that never became usable: the backoff keeps growing over them
        self._rejected = 0
        self._why = "no connection"
        self._waiting: list[Deferred[None]] = []
        self._stopped: Deferred[None] | None = None
        self._was_ready = False
        #: the login of the current connection was cut short by its timeout
        self.login_aborted = False
        #: commands sent (round trips, where they are not pipelined): a metric
        self.calls = 0
        self._service = ClientService(
            make_endpoint(reactor, target, ca, timeout),
            _Factory(self),
            retryPolicy=self._retry_delay,
            clock=reactor,
            prepareConnection=self._prepare,
        )

    @property
    def ready(self) -> bool:
        return self._conn is not None

    def when_ready(self) -> Deferred[None]:
        """Fires once the shard is (or next is) connected and its scripts loaded."""
        if self._conn is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _enter(self, state: str, why: str = "") -> None:
        if state == self.state:
            return
        allowed = TRANSITIONS[self.state]
        if state not in allowed:
            return  # e.g. a late loss after stop(): nothing changes
        message = allowed[state]
        self.state = state
        again = " again" if state == "ready" and self._was_ready else ""
        if state == "ready":
            self._was_ready = True
        if message:
            level = self.log.info if state == "ready" else self.log.warn
            level(message, name=self.name, why=why, again=again)

    # -- connection life -----------------------------------------------------

    def start(self) -> None:
        self._enter("connecting")
        self._service.startService()

    def stop(self) -> Deferred[None]:
        """Close once the calls in flight are answered (a last PING's reply
        comes after theirs); new calls fail from now on."""
        if self._stopped is None:
            conn = self._conn
            last = self._send(conn, "PING") if conn is not None else succeed(None)
            self._conn = None
            self._enter("stopped")
            stopped: Deferred[None] = Deferred()
            last.addBoth(lambda _: self._service.stopService()).chainDeferred(stopped)
            self._stopped = stopped
        # every caller gets its own Deferred, fired when the first stop is done
        d: Deferred[None] = Deferred()

        def done(result: object) -> object:
            d.callback(None)
            return result

        self._stopped.addBoth(done)
        return d

    def _retry_delay(self, attempt: int) -> float:
        if self.state != "stopped":
            self._enter("down", self.refused or self._why)
        n = max(attempt, self._rejected)
        return float(min(0.5 * 2 ** min(n - 1, 10), 10.0))

    def _prepare(self, protocol: _Protocol) -> None:
        # kept synchronous: ClientService cannot take a loss while it waits on a Deferred
        self._rejected += 1
        self.login_aborted = False
        # calls go out as they come: Nagle would hold each behind the last one's ack
        transport = protocol.transport
        while transport is not None and not hasattr(transport, "setTcpNoDelay"):
            transport = getattr(transport, "transport", None)
        if transport is not None:
            transport.setTcpNoDelay(True)
        # txredisapi sends AUTH and SELECT without a timeout: a server that
        # accepts connections but does not answer would hold this one forever
        deadline = self._reactor.callLater(self.timeout, self._login_timed_out, protocol)

        def settled(protocol: _Protocol) -> _Protocol:
            if deadline.active():
                deadline.cancel()
            return protocol

        protocol.whenConnected().addCallback(settled).addCallback(self._load_scripts)
        protocol.whenDisconnected().addCallback(settled).addCallback(self._lost)

    def _login_timed_out(self, protocol: _Protocol) -> None:
        self.login_aborted = True
        self._why = f"no answer to the login in {self.timeout:g} s"
        protocol.transport.abortConnection()

    def _load_scripts(self, protocol: _Protocol) -> Deferred[None]:
        """Load every script before the connection counts: EVALSHA then never
        finds one missing, unless the server lost them (SCRIPT FLUSH, restart)."""
        self.refused = None
        loads = [self._send(protocol, "SCRIPT", "LOAD", s.source) for s in self._scripts.values()]

        def loaded(shas: list[bytes]) -> None:
            if {s.decode() for s in shas} != set(self._scripts):
                raise BackendUnavailable("SCRIPT LOAD gave unexpected hashes")
            if self.state == "stopped" or not protocol.connected:
                protocol.transport.loseConnection()
                return
            self._rejected = 0
            self._conn = protocol
            self._enter("ready")
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

        def failed(f: Failure) -> None:
            if protocol.connected:  # else the loss said why (a TLS handshake, say)
                if f.check(FirstError):
                    f = f.value.subFailure
                self._why = f.getErrorMessage()
                protocol.transport.abortConnection()

        return gatherResults(loads, consumeErrors=True).addCallbacks(loaded, failed)

    def _lost(self, protocol: _Protocol) -> None:
        reason = protocol.lost_reason
        if not (reason is not None and reason.check(net_error.ConnectionAborted)):
            # an abort is ours, and _why already says why
            self._why = reason.getErrorMessage() if reason is not None else "closed"
        if self._conn is protocol:
            self._conn = None
            self._enter("down", self.refused or self._why)

    # -- calls ---------------------------------------------------------------

    def call(self, *args: Any) -> Deferred[Any]:
        """One command; fails with BackendUnavailable (or StoreFull) rather than wait."""
        conn = self._conn
        if conn is None:
            return fail(BackendUnavailable(f"redis {self.name}: not connected ({self.state})"))
        return self._send(conn, *args)

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        """Run a script by hash; a server that lost it (NOSCRIPT) gets it again by EVAL."""
        d = self.call("EVALSHA", script.sha, len(keys), *keys, *args)

        def again(f: Failure) -> Deferred[Any]:
            f.trap(_NoScript)
            return self.call("EVAL", script.source, len(keys), *keys, *args)

        return d.addErrback(again)

    def _send(self, conn: _Protocol, *args: Any) -> Deferred[Any]:
        self.calls += 1
        try:
            d = conn.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return fail(BackendUnavailable(f"redis {self.name}: {e}"))
        # execute_command's Deferred is its own, apart from the reply queue:
        # cancelling it on timeout does not shift later replies
        d.addTimeout(self.timeout, self._reactor)
        return d.addErrback(self._failed, conn)

    def _failed(self, f: Failure, conn: _Protocol) -> None:
        if f.check(txredisapi.ResponseError):
            message = f.getErrorMessage()
            if message.startswith("NOSCRIPT"):
                raise _NoScript(message)
            if message.startswith("OOM"):
                raise StoreFull(f"redis {self.name}: {message}")
            raise BackendUnavailable(f"redis {self.name}: {message}")
        if f.check(CancelledError, CallTimeout, net_error.TimeoutError):
            # a reply this late means a stuck or half-open link: replace it, and
            # fail what comes meanwhile at once rather than after another timeout
            why = f"no answer in {self.timeout:g} s"
            if self._conn is conn:
                self._conn = None
                self._enter("down", why)
            if conn.transport is not None:
                conn.transport.abortConnection()
            raise BackendUnavailable(f"redis {self.name}: {why}")
        if f.check(BackendUnavailable, StoreFull):
            f.raiseException()
        raise BackendUnavailable(f"redis {self.name}: {f.getErrorMessage()}")


class _NoScript(Exception):
    pass
