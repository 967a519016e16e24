"""A device that asks where to connect, and moves when its node fails.

``RoutedClient`` asks a look-up (``/api/v1/route?app=&key=``, or
``/getFreeHostAddress?room=``; doc/protocol.md section 8) where its key or
room lives, connects there over binary TCP, and keeps connected: when the
node closes with a 503 that names a better node it goes there; when the
node dies it goes to the standby the look-up named, and asks again once
those fail. Each new connection resumes after the last message handed to
``on_msg``, and a message seen before is not handed over twice; a send that
gets no receipt is sent again with the same id, which the broker dedupes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import treq
from treq.client import HTTPClient
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from o2obroker.client.binary import BinaryClient, ClientClosed, ClientError

# the broker's answers that another node would only repeat
FINAL_CODES = (400, 401, 403, 409)
LOOKUP_TIMEOUT = 10.0
#: refused hellos in a row whose redirect is followed at once; past it, a look-up after a pause
#: (two draining nodes naming each other must not make a loop)
MAX_REDIRECTS = 3
#: seconds before look-up number n after failures: 0.2 doubling to 10, with jitter
RETRY = backoffPolicy(initialDelay=0.2, maxDelay=10.0)


class LookupFailed(Exception):
    """No look-up URL gave a usable answer. ``final``: the look-up refused the
    app (403), which asking again would only repeat."""

    def __init__(self, why: str, *, final: bool = False) -> None:
        super().__init__(why)
        self.final = final


def tcp_endpoint(address: str) -> str:
    """A client endpoint string for a look-up's ``tcp`` address (``host:port``, ``[v6]:port``)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]").replace(":", r"\:")
    return f"tcp:{host}:{port}"


class RoutedClient:
    """One device kept on the node that its ``key`` (with ``app``) or ``room`` routes to.

    ``lookups`` are base URLs of nodes' HTTP ports (any node answers a
    look-up alike), tried in turn. ``hello`` holds the rest of the hello
    (``token`` or ``user``, ``device``...). ``on_msg`` gets every msg frame
    once, in order. ``connected`` is the live BinaryClient, or None.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        lookups: list[str],
        *,
        app: str | None = None,
        key: str | None = None,
        room: str | None = None,
        cluster: str | None = None,
        hello: dict[str, Any] | None = None,
        on_msg: Callable[[dict[str, Any]], None] | None = None,
        retry: Callable[[int], float] = RETRY,
    ) -> None:
        if (key is None) == (room is None):
            raise ValueError("give exactly one of key and room")
        self.reactor = reactor
        self.lookups = list(lookups)
        self.app, self.key, self.room, self.cluster = app, key, room, cluster
        self.hello = dict(hello or {})
        self.on_msg = on_msg
        self.retry = retry
        self.last_seq = 0
        self.connected: BinaryClient | None = None
        self.node: str | None = None  # the node connected to, by its welcome
        self.moves = 0  # connections after the first: failovers and redirects
        self._running = False
        self._loop: Deferred[None] | None = None
        self._up: list[Deferred[BinaryClient]] = []
        #: rooms joined again on every new connection
        self.rooms: set[str] = set()
        #: fails with the reason once the client gives up (a 401, 403, 409...)
        self.ended: Deferred[None] = Deferred()
        self._http = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    # -- where to go ---------------------------------------------------------

    def _query(self) -> str:
        if self.room is not None:
            return "/getFreeHostAddress?" + urlencode({"room": self.room})
        args = {"key": self.key}
        if self.app is not None:
            args["app"] = self.app
        if self.cluster is not None:
            args["cluster"] = self.cluster
        return "/api/v1/route?" + urlencode(args)

    async def lookup(self) -> list[str]:
        """The tcp addresses to try, best first: the key's node and its standby,
        or the room's node. Raises LookupFailed when no look-up answers."""
        client = HTTPClient(self._http)
        why = "no look-up URL"
        for base in self.lookups:
            url = base.rstrip("/") + self._query()
            try:
                response = await client.get(url).addTimeout(LOOKUP_TIMEOUT, self.reactor)
                answer = await treq.json_content(response)
            except Exception as e:  # a node down is what look-ups are tried in turn for
                why = f"{url}: {e}"
                continue
            if response.code == 403:
                raise LookupFailed(f"{url}: {answer.get('error', 'refused')}", final=True)
            if response.code != 200:
                why = f"{url}: {response.code} {answer.get('error', '')}"
                continue
            return [a for a in _addresses(answer) if a]
        raise LookupFailed(why)

    # -- the connection ------------------------------------------------------

    def start(self) -> Deferred[BinaryClient]:
        """Begin; fires with the first connection once it is welcomed."""
        d = self.wait_connected()
        if not self._running:
            self._running = True
            self._loop = ensureDeferred(self._run())
            self._loop.addErrback(self._ended)
        return d

    def stop(self) -> Deferred[None]:
        """Say bye and stop moving; fires when the connection is closed."""
        self._running = False
        if self._loop is not None:
            self._loop.cancel()
        client, self.connected = self.connected, None
        if client is not None and client.lost is None:
            return client.bye()
        return succeed(None)

    def wait_connected(self) -> Deferred[BinaryClient]:
        """Fires with the live connection, now or once there is one again."""
        if self.connected is not None:
            return succeed(self.connected)
        d: Deferred[BinaryClient] = Deferred()
        self._up.append(d)
        return d

    async def send(
        self, body: Any, *, to: str | None = None, room: str | None = None, id: str
    ) -> dict[str, Any]:
        """Send until a receipt comes, on whichever node holds the device then.

        ``id`` is required: the same id on every try is what makes a send
        after a failover arrive once.
        """
        while True:
            client = await self.wait_connected()
            try:
                return await client.send(body, to=to, room=room, id=id)
            except ClientClosed:
                continue

    def _ended(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        self._running = False
        self.log.info("routed client gave up: {why}", why=failure.getErrorMessage())
        self.ended.errback(failure)
        waiting, self._up = self._up, []
        for d in waiting:
            d.errback(failure)

    async def join(self, room: str) -> dict[str, Any]:
        """Join ``room`` now and on every connection to come; the ``joined`` frame."""
        self.rooms.add(room)
        while True:
            client = await self.wait_connected()
            try:
                return await client.join(room)
            except ClientClosed:
                continue

    async def _run(self) -> None:
        # attempts in a row without a welcome: they space out the look-ups
        failures = 0
        targets: Iterator[str] = iter(())
        while self._running:
            address = next(targets, None)
            if address is None:
                if failures:
                    await deferLater(self.reactor, self.retry(failures), lambda: None)
                try:
                    targets = iter(await self.lookup())
                except LookupFailed as e:
                    if e.final:
                        raise
                    self.log.info("look-up failed: {why}", why=str(e))
                    failures += 1
                continue
            try:
                client = await self._connect(address)
            except (ConnectError, ClientClosed, ClientError) as e:
                if getattr(e, "code", None) in FINAL_CODES:
                    raise
                failures += 1
                redirect = _redirect(e)
                if redirect is not None and failures <= MAX_REDIRECTS:
                    targets = iter([redirect])
                continue
            failures = 0
            # watched before anyone waiting for the connection hears of it, so that
            # whoever learns of its end first finds ``connected`` cleared
            watch = _watch(client.closed)  # a stop cancels the watch, not the client's Deferred
            for room in sorted(self.rooms):
                client.write_frame({"t": "join", "room": room})
            self._attached(client)
            await watch
            self.connected = None
            if not self._running:
                return
            self.moves += 1
            lost = client.lost
            if lost is not None and lost.code in FINAL_CODES:
                raise lost
            redirect = _redirect(lost)
            if redirect is not None:
                targets = iter([redirect])
            # else: the rest of the look-up's answer (the standby), then a new look-up

    async def _connect(self, address: str) -> BinaryClient:
        hello = {"t": "hello", "v": 1, **self.hello}
        if self.app is not None and "app" not in hello:
            hello["app"] = self.app
        if self.last_seq:
            hello["resume"] = {"last": self.last_seq}
        protocol = BinaryClient(hello)
        protocol.on_msg = self._msg
        protocol.welcome.addCallback(self._welcomed)
        endpoint = clientFromString(self.reactor, tcp_endpoint(address))
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        await protocol.welcome
        return protocol

    def _welcomed(self, welcome: dict[str, Any]) -> dict[str, Any]:
        # a store that never held our messages (another cluster, or reset) counts from its own
        if welcome.get("last", 0) < self.last_seq:
            self.last_seq = welcome["last"]
        self.node = welcome.get("node")
        return welcome

    def _attached(self, client: BinaryClient) -> None:
        self.connected = client
        waiting, self._up = self._up, []
        for d in waiting:
            d.callback(client)

    def _msg(self, frame: dict[str, Any]) -> None:
        seq = frame["seq"]
        if seq <= self.last_seq:
            return  # sent again after a move: handed over already
        self.last_seq = seq
        if self.on_msg is not None:
            self.on_msg(frame)


def _watch(d: Deferred[Any]) -> Deferred[None]:
    """Fires when ``d`` does; cancelling it leaves ``d`` alone."""
    watch: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        if not watch.called:
            watch.callback(None)
        return result

    d.addBoth(fired)
    return watch


def _addresses(answer: dict[str, Any]) -> list[str]:
    if "standby" in answer:  # a route answer
        return [n.get("tcp", "") for n in (answer.get("node"), answer.get("standby")) if n]
    return [answer.get("tcp", "")]


def _redirect(error: Any) -> str | None:
    frame = getattr(error, "frame", None) or {}
    if frame.get("code") != 503:
        return None
    return (frame.get("redirect") or {}).get("tcp")
