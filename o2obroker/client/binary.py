"""BinaryClient: hello, send with receipts, msgs with acks, rooms, over binary TCP."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from o2obroker.wire import FrameSplitter, decode_cbor, encode_cbor, frame
from o2obroker.wire.limits import Limits


class ClientError(Exception):
    """The broker answered with an error frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')} {frame.get('reason')}")
        self.frame = frame
        self.code = frame.get("code")


class ClientClosed(ConnectionError):
    """The connection ended. ``frame`` is the error frame the broker closed it with
    (409 replaced, 503 kicked or draining...), or None when it just went away."""

    def __init__(self, frame: dict[str, Any] | None = None) -> None:
        reason = f"{frame.get('code')} {frame.get('reason')}" if frame else "connection closed"
        super().__init__(reason)
        self.frame = frame
        self.code = frame.get("code") if frame else None


class BinaryClient(Protocol):
    """One device's connection. Incoming msgs go to ``on_msg`` if set, else to
    the ``messages`` queue; with ``auto_ack`` each received msg is acknowledged."""

    def __init__(self, hello: dict[str, Any], *, auto_ack: bool = True) -> None:
        self.hello = hello
        self.auto_ack = auto_ack
        self.welcome: Deferred[dict[str, Any]] = Deferred()
        self.messages: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.frames: list[dict[str, Any]] = []  # every other frame, for inspection
        self.on_msg: Callable[[dict[str, Any]], None] | None = None
        self.last_seq = 0
        self.closed: Deferred[None] = Deferred()
        self.lost: ClientClosed | None = None  # why the connection ended, once it has
        self._last_error: dict[str, Any] | None = None
        self._splitter = FrameSplitter(Limits().max_frame * 16)
        self._pending: dict[str, Deferred[dict[str, Any]]] = {}
        self._waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{hello.get('device') or 'py'}-{os.urandom(3).hex()}-"

    # -- protocol ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.write_frame(self.hello)

    def dataReceived(self, data: bytes) -> None:
        for payload in self._splitter.feed(data):
            self.frame_received(decode_cbor(payload, _CLIENT_LIMITS))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        error = self.lost = ClientClosed(self._last_error)
        if not self.welcome.called:
            self.welcome.errback(error)
        for d in self._pending.values():
            d.errback(error)
        self._pending.clear()
        waiting, self.messages.waiting = self.messages.waiting, []
        for d in waiting:
            d.errback(error)
        self.closed.callback(None)

    def next_message(self) -> Deferred[dict[str, Any]]:
        """The next msg frame; fails with ClientClosed once none can come any more."""
        if not self.messages.pending and self.lost is not None:
            return fail(self.lost)
        return self.messages.get()

    def frame_received(self, f: dict[str, Any]) -> None:
        t = f.get("t")
        if t == "msg":
            seq = f["seq"]
            if seq > self.last_seq:
                self.last_seq = seq
            if self.on_msg is not None:
                self.on_msg(
                    f
                )  # acked once it has returned: a handler that raises leaves it unacked
                if self.auto_ack:
                    self.write_frame({"t": "ack", "seq": seq})
                return
            # acked before the queue hands it over: its reader runs at once, and a
            # reader that says bye then must not leave this ack behind the bye
            if self.auto_ack:
                self.write_frame({"t": "ack", "seq": seq})
            self.messages.put(f)
            return
        if t == "receipt":
            d = self._pending.pop(f["id"], None)
            if d is not None:
                d.callback(f)
            return
        if t == "history":
            d = self._pending.pop(f.get("ref"), None)
            if d is not None:
                d.callback(f)
            return
        if t == "welcome":
            self.welcome.callback(f)
            return
        if t == "ping":
            self.write_frame({"t": "pong"})
            return
        if t == "error":
            ref = f.get("ref")
            d = self._pending.pop(ref, None) if ref is not None else None
            if d is not None:
                d.errback(ClientError(f))
                return
            if not self.welcome.called:
                self.welcome.errback(ClientError(f))
                return
            self._last_error = f  # an error that closes the connection says why
        self.frames.append(f)
        for d in self._waiters.pop(t, []):
            d.callback(f)

    # -- API --------------------------------------------------------------

    def write_frame(self, f: dict[str, Any]) -> None:
        self.transport.write(frame(encode_cbor(f)))

    def next_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def send(
        self,
        body: Any,
        *,
        to: str | None = None,
        room: str | None = None,
        id: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Send a message; fires with its receipt frame, or fails with ClientError."""
        send_id = id or self.next_id()
        f: dict[str, Any] = {"t": "send", "id": send_id, "body": body}
        if room is not None:
            f["room"] = room
        else:
            f["to"] = to
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[send_id] = d
        self.write_frame(f)
        return d

    def wait_for(self, t: str) -> Deferred[dict[str, Any]]:
        """Fires with the next frame of type ``t`` (not msg, receipt or welcome)."""
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.setdefault(t, []).append(d)
        return d

    def join(self, room: str) -> Deferred[dict[str, Any]]:
        d = self.wait_for("joined")
        self.write_frame({"t": "join", "room": room})
        return d

    def leave(self, room: str) -> Deferred[dict[str, Any]]:
        d = self.wait_for("left")
        self.write_frame({"t": "leave", "room": room})
        return d

    def history(
        self,
        *,
        with_: str | None = None,
        room: str | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        """A page of the archive (doc/protocol.md section 4, History): the
        conversation with user ``with_`` or ``room``'s. Fires with the answer
        frame (``messages``, newest first, and ``more``); pass the last
        message's ``mid`` as ``before`` for the next page. Fails with
        ClientError (403 not a member, 404 no archive)."""
        query_id = self.next_id()
        f: dict[str, Any] = {"t": "history", "id": query_id}
        if room is not None:
            f["room"] = room
        else:
            f["with"] = with_
        if before is not None:
            f["before"] = before
        if limit is not None:
            f["limit"] = limit
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[query_id] = d
        self.write_frame(f)
        return d

    def ack(self, seq: int) -> None:
        self.write_frame({"t": "ack", "seq": seq})

    def bye(self) -> Deferred[None]:
        self.write_frame({"t": "bye"})
        return self.closed


_CLIENT_LIMITS = Limits(max_frame=16 << 20, max_body=16 << 20)


class _ClientFactory(Factory):
    def __init__(self, hello: dict[str, Any], auto_ack: bool) -> None:
        self.hello = hello
        self.auto_ack = auto_ack

    def buildProtocol(self, addr: Any) -> BinaryClient:
        return BinaryClient(self.hello, auto_ack=self.auto_ack)


async def connect(
    reactor: Any,
    endpoint: str,
    *,
    user: str | None = None,
    token: str | None = None,
    device: str | None = None,
    resume: int | None = None,
    auto_ack: bool = True,
    **extra: Any,
) -> BinaryClient:
    """Connect and say hello; returns the client once the welcome has arrived."""
    hello: dict[str, Any] = {"t": "hello", "v": 1}
    if token is not None:
        hello["token"] = token
    if user is not None:
        hello["user"] = user
    if device is not None:
        hello["device"] = device
    if resume is not None:
        hello["resume"] = {"last": resume}
    hello.update(extra)
    client = await clientFromString(reactor, endpoint).connect(_ClientFactory(hello, auto_ack))
    await client.welcome
    return client
