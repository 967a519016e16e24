"""IBackend on Redis: the durable store of a cluster, sharded over one or more servers.

Each user's keys share the hash tag ``{u:<id>}`` (rooms: ``{r:<name>}``) and
live on the shard a jump consistent hash of that tag picks, so one script
reaches all of a user's state in one round trip. A batch of messages for many
users is one script per shard, not one call per message. Timestamps come from
the injected ``clock``; I/O, timeouts and reconnects use ``reactor``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import cbor2
from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from o2obroker.backend.interface import (
    OFFLINE,
    BackendUnavailable,
    EncodedMessage,
    IBackend,
    InboxState,
    Location,
    Presence,
    Receipt,
    Resynced,
    StoredMessage,
)
from o2obroker.backend.redis import scripts as S
from o2obroker.backend.redis.bus import Bus
from o2obroker.backend.redis.shard import Shard
from o2obroker.backend.redis.url import RedisTarget

DAY = 24 * 3600.0
# keys outlive what the scripts keep by this much: clocks of nodes differ a little
KEY_TTL_MARGIN = 60.0
# messages one append script takes at most (one user's messages are never split)
APPEND_CHUNK = 1000
# users one resync script takes at most: Redis runs nothing else while it runs
RESYNC_CHUNK = 500


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: adding a bucket moves 1/n of the keys."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(tag: str, buckets: int) -> int:
    """The shard index of a hash tag, the same on every node and every run."""
    if buckets == 1:
        return 0
    digest = hashlib.blake2b(tag.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), buckets)


#: a packed message's head: ts, length of the skipped device, length of the CBOR
ENTRY = struct.Struct(">dBI")


def message_blob(message: StoredMessage) -> bytes:
    """What the inbox keeps of a message: the CBOR map of its fields, the very
    bytes its devices' frames are spliced from; [mid, ts, fields] for fields
    that do not hold the message's own mid and ts (or hold a ``t``)."""
    if message.__class__ is EncodedMessage:
        return message.cbor_map()
    fields = message.fields
    if fields.get("mid") == message.mid and fields.get("ts") == message.ts and "t" not in fields:
        return message.cbor_map()
    return cbor2.dumps([message.mid, message.ts, fields])


def pack_messages(messages: list[StoredMessage], skips: list[str | None] | None = None) -> bytes:
    """A user's messages as the append script reads them (and publishes them):
    per message its head (``ENTRY``), the device not to write it to, its blob."""
    out = []
    pack = ENTRY.pack
    if skips is None:
        for message in messages:
            blob = message_blob(message)
            out += (pack(message.ts, 0, len(blob)), blob)
    else:
        for message, skip in zip(messages, skips, strict=True):
            blob = message_blob(message)
            device = skip.encode() if skip is not None else b""
            out += (pack(message.ts, len(device), len(blob)), device, blob)
    return b"".join(out)


_PAIR = struct.Struct(">II")


def _pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Pairs of strings in one argument, as the scripts' ``pairs_of`` reads them."""
    out = []
    for a, b in pairs:
        x, y = a.encode(), b.encode()
        out += (_PAIR.pack(len(x), len(y)), x, y)
    return b"".join(out)


def decode_blob(blob: bytes) -> StoredMessage:
    """A message from what the inbox keeps (``message_blob``)."""
    if blob[:1] and blob[0] >> 5 == 5:  # a map: its fields, decoded when read
        return EncodedMessage(blob)
    mid, ts, fields = cbor2.loads(blob)
    # its stored length as its size: what a resume backlog slices by
    return StoredMessage(mid, ts, fields, len(blob))


log = Logger()


def _seq(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _text(value: bytes) -> str:
    return value.decode()


_T = TypeVar("_T")


def _same(user: str) -> str:
    return user


@implementer(IBackend)
class RedisBackend:
    """Inboxes, cursors, dedupe, rooms, presence and watch lists in Redis.

    The limits are those of MemoryBackend and mean the same; the contract
    suite holds both to the same results. ``start()`` connects (in the
    background: until a shard is up, its calls fail at once), ``stop()``
    closes.
    """

    def __init__(
        self,
        targets: Sequence[RedisTarget],
        clock: IReactorTime,
        reactor: Any,
        node_id: str = "n1",
        *,
        prefix: str = "o2o",
        ca: str | None = None,
        timeout: float = 5.0,
        ping_interval: float = 10.0,
        inbox_cap: int = 10_000,
        inbox_ttl: float = 7 * DAY,
        device_ttl: float = 7 * DAY,
        dedupe_ttl: float = 600.0,
        dedupe_cap: int = 100_000,
        offline_ttl: float = DAY,
    ) -> None:
        if not targets:
            raise ValueError("RedisBackend needs at least one server")
        self.node_id = node_id
        #: this start of the node: what it leaves in Redis is judged by it, so
        #: that a node started again under the same id does not count as its past
        self.boot = uuid.uuid4().hex[:12]
        self._here = f"{node_id}/{self.boot}"
        self._indexed = False  # this boot is in the set of nodes with parts or locations
        self._clock = clock
        self._prefix = prefix
        self._inbox_cap = inbox_cap
        self._inbox_ttl = inbox_ttl
        self._device_ttl = device_ttl
        self._dedupe_ttl = dedupe_ttl
        self._dedupe_cap = dedupe_cap
        self._offline_ttl = offline_ttl
        # key lifetimes in Redis's own (real) time, for abandoned users' keys only
        self._inbox_key_ttl = int((inbox_ttl + KEY_TTL_MARGIN) * 1000)
        self._device_key_ttl = int((device_ttl + KEY_TTL_MARGIN) * 1000)
        self._dedupe_key_ttl = int((dedupe_ttl + KEY_TTL_MARGIN) * 1000)
        self.shards = [Shard(t, reactor, S.ALL, timeout=timeout, ca=ca) for t in targets]
        self._reactor = reactor
        # resync calls of this reactor turn, sent together at its end
        self._resyncs: list[tuple[str, Presence, list[str], Deferred[Resynced]]] = []
        self._resyncing: Any = None
        # merge_presence and locate calls of this reactor turn, and this turn's
        # changes to this boot's indexes: sent together at its end, so that a
        # turn of hellos costs one read of the live nodes and a script per shard
        self._merges: list[tuple[str, Presence, Deferred[tuple[Presence, Presence]]]] = []
        self._locates: list[tuple[str, str, Deferred[Location | None]]] = []
        self._states: list[tuple[str, Deferred[InboxState]]] = []
        # callers of this turn's one read of the live nodes
        self._live_waiters: list[Deferred[set[str]]] = []
        self._indexing: dict[str, dict[str, bool]] = {}
        self._turn: Any = None
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._ping_interval = ping_interval
        #: the cross-node bus: a subscriber connection per server, channels by user
        self.bus = Bus(
            list(targets),
            reactor,
            self._user_index,
            self.channel,
            timeout=timeout,
            ca=ca,
            ping_interval=ping_interval,
        )

    # -- life ----------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether every shard is connected (``/healthz`` says 503 otherwise)."""
        return all(s.ready for s in self.shards)

    def when_ready(self) -> Deferred[Any]:
        """Fires once every shard is connected."""
        return gatherResults([s.when_ready() for s in self.shards])

    def start(self) -> None:
        for shard in self.shards:
            shard.start()
        self.bus.start()
        if self._ping_interval:
            self._pinger.start(self._ping_interval, now=False)

    def stop(self) -> Deferred[Any]:
        if self._pinger.running:
            self._pinger.stop()
        # resyncs gathered for this turn's end are not sent: they fail now,
        # and no timer outlives the backend
        if self._resyncing is not None:
            self._resyncing.cancel()
            self._resyncing = None
        gathered, self._resyncs = self._resyncs, []
        for *_, d in gathered:
            d.errback(BackendUnavailable("redis: the backend stopped"))
        if self._turn is not None:
            # what this turn asked for still goes out before the connections close
            self._turn.cancel()
            self._end_turn()
        return DeferredList([self.bus.stop(), *[s.stop() for s in self.shards]])

    def _ping(self) -> None:
        # a half-open connection answers nothing: the ping's timeout replaces it
        for shard in self.shards:
            if shard.ready:
                shard.call("PING").addErrback(lambda f: None)

    # -- keys ----------------------------------------------------------------

    def _user_index(self, user: str) -> int:
        n = len(self.shards)
        return 0 if n == 1 else shard_of("u:" + user, n)

    def channel(self, user: str) -> bytes:
        """The pub/sub channel of ``user``: its hash tag, on its own shard."""
        return f"{self._prefix}:{{u:{user}}}".encode()

    def publish_many(self, payloads: dict[str, bytes]) -> Deferred[dict[str, int]]:
        """Publish each user's payload on its channel, one script per shard; fire
        with {user: nodes that got it}. Fails with BackendUnavailable."""
        calls = []
        for shard, users in self._by_shard(list(payloads)).items():
            args: list[Any] = []
            for user in users:
                args += (self.channel(user), payloads[user])
            d = shard.evalsha(S.PUBLISH, [], args)
            calls.append(
                d.addCallback(lambda counts, us: dict(zip(us, counts, strict=True)), users)
            )
        return _merged(calls)

    def _user_shard(self, user: str) -> Shard:
        shards = self.shards
        return shards[0] if len(shards) == 1 else shards[shard_of("u:" + user, len(shards))]

    def _key(self, user: str, suffix: str) -> str:
        return f"{self._prefix}:{{u:{user}}}:{suffix}"

    def _keys(self, user: str, *suffixes: str) -> list[str]:
        head = f"{self._prefix}:{{u:{user}}}:"
        return [head + s for s in suffixes]

    def _room(self, room: str) -> tuple[Shard, str]:
        shards = self.shards
        shard = shards[0] if len(shards) == 1 else shards[shard_of("r:" + room, len(shards))]
        return shard, f"{self._prefix}:{{r:{room}}}:members"

    def _horizon(self) -> int:
        return int((self._clock.seconds() - self._inbox_ttl) * 1000)

    def _by_shard(self, users: Sequence[str]) -> dict[Shard, list[str]]:
        groups: dict[Shard, list[str]] = {}
        for user in users:
            groups.setdefault(self._user_shard(user), []).append(user)
        return groups

    def _chunks(
        self, items: Sequence[_T], user: Callable[[_T], str] = itemgetter(0)
    ) -> Iterator[tuple[Shard, list[_T]]]:
        """``items`` grouped by the shard of their ``user``, in call order, in
        pieces of at most ``RESYNC_CHUNK``: one script each."""
        groups: dict[Shard, list[_T]] = {}
        for item in items:
            groups.setdefault(self._user_shard(user(item)), []).append(item)
        for shard, group in groups.items():
            for i in range(0, len(group), RESYNC_CHUNK):
                yield shard, group[i : i + RESYNC_CHUNK]

    def _presence_top(self, now: float, live: set[str]) -> list[Any]:
        """The arguments every presence merge of a script shares: this boot,
        the time, the offline record's lifetime and the live boots."""
        return [
            self._here,
            now,
            now + self._offline_ttl,
            int((self._offline_ttl + KEY_TTL_MARGIN) * 1000),
            len(live),
            *sorted(live),
        ]

    # -- inbox ---------------------------------------------------------------

    def append(self, user: str, messages: list[StoredMessage]) -> Deferred[list[int]]:
        return self.append_many({user: messages}).addCallback(lambda seqs: seqs[user])

    def append_many(
        self, inboxes: dict[str, list[StoredMessage]]
    ) -> Deferred[dict[str, list[int]]]:
        """One script per shard for the whole batch, or per ``APPEND_CHUNK``
        messages of it: Redis runs nothing else while a script runs."""
        return self._append(inboxes, None, b"").addCallback(lambda stored: stored[0])

    def append_publish(
        self,
        inboxes: dict[str, list[StoredMessage]],
        skips: dict[str, list[str | None]],
        head: bytes,
    ) -> Deferred[tuple[dict[str, list[int]], dict[str, int]]]:
        """``append_many``, and in the same scripts publish each user's stored
        messages on its channel: ``head``, the user's first seq (a big-endian
        double) and its packed messages (``pack_messages``), one publish per
        user per batch. ``skips`` names, per message of a user, the device not
        to write it to. Fire with ({user: seqs}, {user: subscribers that got
        the publish}); fail as append_many does."""
        return self._append(inboxes, skips, head)

    def _append(
        self,
        inboxes: dict[str, list[StoredMessage]],
        skips: dict[str, list[str | None]] | None,
        head: bytes,
    ) -> Deferred[tuple[dict[str, list[int]], dict[str, int]]]:
        if self._states:
            # an inbox state asked for earlier in this turn does not see these
            self._send_states()
        top = [self._horizon(), self._inbox_cap, self._inbox_key_ttl, uuid.uuid4().hex[:12], head]
        calls = []
        channel = self.channel if head else lambda user: b""
        skip = skips.get if skips else lambda user: None

        def send(shard: Shard, users: list[str], keys: list[str], args: list[Any]) -> None:
            d = shard.evalsha(S.APPEND, keys, args)
            calls.append(d.addCallback(self._seqs, users, inboxes))

        for shard, users in self._by_shard(list(inboxes)).items():
            keys: list[str] = []
            args: list[Any] = list(top)
            chunk: list[str] = []
            size = 0
            for user in users:
                messages = inboxes[user]
                if size and size + len(messages) > APPEND_CHUNK:
                    send(shard, chunk, keys, args)
                    keys, args, chunk, size = [], list(top), [], 0
                chunk.append(user)
                size += len(messages)
                keys += self._keys(user, "meta", "inbox")
                args += (len(messages), channel(user), pack_messages(messages, skip(user)))
            send(shard, chunk, keys, args)
        if len(calls) == 1:
            return calls[0]
        return gatherResults(calls, consumeErrors=True).addCallbacks(_merged_pairs, _first_error)

    @staticmethod
    def _seqs(
        out: list[int], users: list[str], inboxes: dict[str, list[StoredMessage]]
    ) -> tuple[dict[str, list[int]], dict[str, int]]:
        # out: first seq and subscriber count per user, in the order of users
        seqs, counts = {}, {}
        for user, first, got in zip(users, out[::2], out[1::2], strict=True):
            seqs[user] = list(range(first, first + len(inboxes[user])))
            counts[user] = got
        return seqs, counts

    def read(self, user: str, after: int, limit: int) -> Deferred[list[tuple[int, StoredMessage]]]:
        keys = self._keys(user, "meta", "inbox")
        d = self._user_shard(user).evalsha(S.READ, keys, [self._horizon(), after, limit])
        return d.addCallback(lambda entries: [(_seq(i), decode_blob(f[3])) for i, f in entries])

    def inbox_state(self, user: str) -> Deferred[InboxState]:
        """Gathered with the other inbox reads of this reactor turn (every hello
        asks one): one script per shard per ``RESYNC_CHUNK`` calls, in call order."""
        d: Deferred[InboxState] = Deferred()
        self._states.append((user, d))
        if self._turn is None:
            self._turn = self._reactor.callLater(0, self._end_turn)
        return d

    def _send_states(self) -> None:
        """The inbox_state calls asked for so far. Sent at once by whatever else
        writes an inbox, so that a state asked before a write does not see it."""
        batch, self._states = self._states, []
        if not batch:
            return
        top = [self._horizon(), uuid.uuid4().hex[:12]]

        def fail_all(f: Failure, items: list[Any]) -> None:
            for item in items:
                item[1].errback(f)

        def answer(out: list[Any], items: list[Any]) -> None:
            for k, item in enumerate(items):
                last, first, epoch = out[3 * k : 3 * k + 3]
                item[1].callback(InboxState(last=last, first=first, epoch=epoch.decode()))

        for shard, chunk in self._chunks(batch):
            keys: list[str] = []
            for user, _ in chunk:
                keys += self._keys(user, "meta", "inbox")
            d = shard.evalsha(S.STATE_MANY, keys, top)
            d.addCallbacks(answer, fail_all, (chunk,), errbackArgs=(chunk,))

    def cursor(self, user: str, device: str) -> Deferred[int]:
        return self._user_shard(user).evalsha(S.CURSOR, self._keys(user, "cur"), [device])

    def ack(self, user: str, device: str, seq: int) -> Deferred[int]:
        return self._move(user, device, seq, "ack")

    def set_cursor(self, user: str, device: str, seq: int) -> Deferred[int]:
        return self._move(user, device, seq, "set")

    def _move(self, user: str, device: str, seq: int, mode: str) -> Deferred[int]:
        self._send_states()
        now = self._clock.seconds()
        keys = self._keys(user, "meta", "inbox", "cur", "seen")
        args = [device, seq, now, now - self._device_ttl, mode, self._device_key_ttl]
        return self._user_shard(user).evalsha(S.MOVE, keys, args)

    # -- send-id dedupe ------------------------------------------------------

    def claim(
        self, user: str, ts: int, claims: list[tuple[str, str]]
    ) -> Deferred[list[Receipt | None]]:
        now = self._clock.seconds()
        args = [now, now + self._dedupe_ttl, self._dedupe_cap, ts, self._dedupe_key_ttl]
        args.append(_pairs(claims))
        keys = self._keys(user, "sid", "sidq", "sst")
        d = self._user_shard(user).evalsha(S.CLAIM, keys, args)
        return d.addCallback(lambda out: [_receipt(r) for r in out])

    def settle(self, user: str, statuses: dict[str, str]) -> Deferred[None]:
        if not statuses:
            return succeed(None)
        keys = self._keys(user, "sid", "sst")
        d = self._user_shard(user).evalsha(S.SETTLE, keys, [_pairs(statuses.items())])
        return d.addCallback(lambda _: None)

    # -- rooms ---------------------------------------------------------------

    def join(self, room: str, user: str) -> Deferred[int]:
        shard, key = self._room(room)
        return shard.evalsha(S.MEMBERSHIP, [key], ["join", user])

    def leave(self, room: str, user: str) -> Deferred[int]:
        shard, key = self._room(room)
        return shard.evalsha(S.MEMBERSHIP, [key], ["leave", user])

    def members(self, room: str) -> Deferred[frozenset[str]]:
        shard, key = self._room(room)
        return shard.call("SMEMBERS", key).addCallback(lambda ms: frozenset(map(_text, ms)))

    # -- presence ------------------------------------------------------------

    def set_presence(self, user: str, presence: Presence) -> Deferred[None]:
        shard, key = self._user_shard(user), self._key(user, "pres")
        p = presence
        if p.devices == 0 and p.state == "offline":
            if p.ts == 0:
                return shard.call("DEL", key).addCallback(lambda _: None)
            # kept for watches with since, until the node's clock passes ``expires``;
            # Redis's own TTL only clears what nobody reads again
            expires = self._clock.seconds() + self._offline_ttl
            value = _json([p.state, p.status, p.devices, p.ts, expires])
            ttl = int((self._offline_ttl + KEY_TTL_MARGIN) * 1000)
            d = shard.call("SET", key, value, "PX", ttl)
        else:
            d = shard.call("SET", key, _json([p.state, p.status, p.devices, p.ts]))
        return d.addCallback(lambda _: None)

    def merge_presence(self, user: str, part: Presence) -> Deferred[tuple[Presence, Presence]]:
        """Gathered with the other merges of this reactor turn: one read of the
        live nodes (on the registry's shard), then one script per shard per
        ``RESYNC_CHUNK`` calls (so two nodes never interleave), in call order."""
        if self._resyncing is not None:
            # a resync asked for earlier in this turn goes out first
            self._resyncing.cancel()
            self._resync_batch()
        d: Deferred[tuple[Presence, Presence]] = Deferred()
        self._merges.append((user, part, d))
        # the index a sweeper reads when this node dies
        self._index("parts", user, part.devices > 0 or part.state != "offline")
        return d

    def _end_turn(self) -> None:
        self._turn = None
        self._send_locates()
        self._send_states()
        self._send_merges()
        self._read_live()
        self._send_index()

    def _turn_live(self) -> Deferred[set[str]]:
        """The live nodes, from the one read of this reactor turn's end that all
        of the turn's merges, relocates and location look-ups share."""
        d: Deferred[set[str]] = Deferred()
        self._live_waiters.append(d)
        if self._turn is None:
            self._turn = self._reactor.callLater(0, self._end_turn)
        return d

    def _read_live(self) -> None:
        """Read the live nodes now for whoever waits on this turn's read."""
        waiters, self._live_waiters = self._live_waiters, []
        if not waiters:
            return

        def tell(result: set[str] | Failure) -> None:
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        self._live(self._clock.seconds()).addBoth(tell)

    def _send_merges(self) -> None:
        batch, self._merges = self._merges, []
        if not batch:
            return
        now = self._clock.seconds()

        def fail_all(f: Failure, items: list[Any]) -> None:
            for item in items:
                item[2].errback(f)

        def run(live: set[str]) -> None:
            top = self._presence_top(now, live)
            for shard, chunk in self._chunks(batch):
                keys: list[str] = []
                args: list[Any] = list(top)
                for user, p, _ in chunk:
                    keys += self._keys(user, "presn", "pres")
                    args += (p.state, p.status, p.devices, p.ts)
                d = shard.evalsha(S.MERGE_MANY, keys, args)
                d.addCallbacks(answer, fail_all, (chunk,), errbackArgs=(chunk,))

        def answer(out: list[bytes], items: list[Any]) -> None:
            for k, item in enumerate(items):
                item[2].callback((_presence(out[2 * k], now), _presence(out[2 * k + 1], now)))

        live: Deferred[set[str]] = Deferred()
        self._live_waiters.append(live)
        live.addCallbacks(run, fail_all, errbackArgs=(batch,))
        # now: the merges asked for so far go out before whatever called this
        self._read_live()

    def _send_locates(self) -> None:
        """The locate calls asked for so far: one script per shard per
        ``RESYNC_CHUNK`` calls. Sent at once by whatever else touches
        locations, so that nothing overtakes them."""
        batch, self._locates = self._locates, []
        if not batch:
            return

        def fail_all(f: Failure, items: list[Any]) -> None:
            for item in items:
                item[2].errback(f)

        def answer(out: list[bytes], items: list[Any]) -> None:
            for before, item in zip(out, items, strict=True):
                item[2].callback(_location(before) if before else None)

        for shard, chunk in self._chunks(batch):
            keys = [self._key(user, "loc") for user, _, _ in chunk]
            args = [self._here, *[device for _, device, _ in chunk]]
            d = shard.evalsha(S.LOCATE_MANY, keys, args)
            d.addCallbacks(answer, fail_all, (chunk,), errbackArgs=(chunk,))

    def _index(self, kind: str, user: str, add: bool) -> None:
        """Add ``user`` to (or remove it from) this boot's ``kind`` index, which a
        sweeper pops from when this node is dead: at the end of this reactor
        turn, one command for all the users of the turn."""
        self._indexing.setdefault(kind, {})[user] = add
        if self._turn is None:
            self._turn = self._reactor.callLater(0, self._end_turn)

    def _index_many(self, kind: str, users: list[str], add: bool) -> None:
        """``_index`` for many users."""
        if not users:
            return
        ops = self._indexing.setdefault(kind, {})
        for user in users:
            ops[user] = add
        if self._turn is None:
            self._turn = self._reactor.callLater(0, self._end_turn)

    def _send_index(self) -> None:
        # the last word of the turn on each user counts: users commute
        indexing, self._indexing = self._indexing, {}
        reg = self.shards[0]
        for kind, ops in indexing.items():
            key = f"{self._prefix}:{{nodes}}:{kind}:{self._here}"
            adds = [user for user, add in ops.items() if add]
            removes = [user for user, add in ops.items() if not add]
            if adds:
                if not self._indexed:
                    self._indexed = True
                    reg.call("SADD", self._parted(), self._here).addErrback(self._unindexed)
                reg.call("SADD", key, *adds).addErrback(self._unindexed)
            if removes:
                reg.call("SREM", key, *removes).addErrback(self._unindexed)

    def _live(self, now: float) -> Deferred[set[str]]:
        """``<node>/<boot>`` of every live node, this one's included (it is
        running this code, heartbeat or not)."""
        reg, keys = self._registry()
        d = reg.evalsha(S.LIVE, keys[1:], [int(now * 1000)])
        return d.addCallback(lambda live: {n.decode() for n in live} | {self._here})

    def _unindexed(self, f: Failure) -> None:
        self._indexed = False
        log.warn("indexing presence parts failed: {why}", why=f.getErrorMessage())

    def _parted(self) -> str:
        """The set of ``<node>/<boot>`` that have recorded presence parts or locations."""
        return f"{self._prefix}:{{nodes}}:parted"

    def _merge(
        self, ids: set[str], user: str, part: Presence, now: float, node: str
    ) -> Deferred[tuple[Presence, Presence]]:
        p = part
        args = [node, p.state, p.status, p.devices, p.ts, now]
        args += [now + self._offline_ttl, int((self._offline_ttl + KEY_TTL_MARGIN) * 1000)]
        keys = self._keys(user, "presn", "pres")
        d = self._user_shard(user).evalsha(S.MERGE_PRESENCE, keys, args + sorted(ids))
        return d.addCallback(lambda pair: (_presence(pair[0], now), _presence(pair[1], now)))

    def sweep_presence(self, limit: int) -> Deferred[dict[str, tuple[Presence, Presence]]]:
        """Pop up to ``limit`` users of the first dead ``<node>/<boot>`` that has
        any left, from its presence parts and its located devices each; for each,
        drop that node's locations of the user and merge its presence without
        that node's part. A dead node with nothing left leaves the index, and
        the next one is looked at in the same call."""
        reg = self.shards[0]
        now = self._clock.seconds()
        gone = Presence("offline", "", 0, int(now * 1000))
        head = f"{self._prefix}:{{nodes}}:"

        def nodes(found: list[Any]) -> Deferred[dict[str, tuple[Presence, Presence]]] | dict:
            parted, live = found
            dead = sorted(n.decode() for n in parted if n.decode() not in live)
            return next_node(dead, live)

        def next_node(
            dead: list[str], live: set[str]
        ) -> Deferred[dict[str, tuple[Presence, Presence]]] | dict:
            if not dead:
                return {}
            node = dead[0]
            d = gatherResults(
                [
                    reg.call("SPOP", head + "parts:" + node, limit),
                    reg.call("SPOP", head + "located:" + node, limit),
                ],
                consumeErrors=True,
            )
            d.addCallbacks(users, _first_error, (node, dead, live))
            return d

        def users(
            popped: list[list[bytes]], node: str, dead: list[str], live: set[str]
        ) -> Deferred[dict[str, tuple[Presence, Presence]]] | dict:
            names = sorted({u.decode() for some in popped for u in some})
            if not names:
                reg.call("SREM", self._parted(), node).addErrback(self._unindexed)
                return next_node(dead[1:], live)
            calls = []
            for u in names:
                shard = self._user_shard(u)
                shard.evalsha(S.DROP_LOCATIONS, [self._key(u, "loc")], [node]).addErrback(
                    lambda f: None  # the merge right after it on the same connection fails too
                )
                calls.append(self._merge(live, u, gone, now, node))
            d = gatherResults(calls, consumeErrors=True)
            return d.addCallbacks(lambda pairs: dict(zip(names, pairs, strict=True)), _first_error)

        parted = reg.call("SMEMBERS", self._parted())
        return gatherResults([parted, self._live(now)], consumeErrors=True).addCallbacks(
            nodes, _first_error
        )

    # -- device locations ----------------------------------------------------

    def locate(self, user: str, device: str) -> Deferred[Location | None]:
        """Gathered with the other locates of this reactor turn: one script per shard."""
        d: Deferred[Location | None] = Deferred()
        self._locates.append((user, device, d))
        self._index("located", user, True)
        return d

    def relocate(self, user: str, devices: list[str]) -> Deferred[dict[str, Location]]:
        if not devices:
            return succeed({})
        self._send_locates()
        key = self._key(user, "loc")

        def located(live: set[str]) -> Deferred[dict[str, Location]]:
            args = [self._here, len(devices), *devices, *sorted(live)]
            d = self._user_shard(user).evalsha(S.RELOCATE, [key], args)
            return d.addCallback(
                lambda flat: {
                    name.decode(): _location(at)
                    for name, at in zip(flat[::2], flat[1::2], strict=True)
                }
            )

        self._index("located", user, True)
        return self._turn_live().addCallback(located)

    def resync(self, user: str, part: Presence, devices: list[str]) -> Deferred[Resynced]:
        """Gathered with the other calls of this reactor turn: one read of the
        live nodes, one script per shard per ``RESYNC_CHUNK`` users, and one
        command per index for all of them."""
        # merges asked for earlier in this turn go out first
        self._send_merges()
        d: Deferred[Resynced] = Deferred()
        self._resyncs.append((user, part, devices, d))
        if self._resyncing is None:
            self._resyncing = self._reactor.callLater(0, self._resync_batch)
        return d

    def _resync_batch(self) -> None:
        self._resyncing = None
        self._send_locates()
        batch, self._resyncs = self._resyncs, []
        now = self._clock.seconds()
        users = [u for u, _, _, _ in batch]
        self._index_many("located", users, True)
        present = [u for u, p, _, _ in batch if p.devices > 0 or p.state != "offline"]
        self._index_many("parts", present, True)
        if len(present) < len(users):
            self._index_many("parts", sorted(set(users) - set(present)), False)

        def fail_all(f: Failure, items: list[Any]) -> None:
            for item in items:
                item[3].errback(f)

        def run(live: set[str]) -> None:
            top = self._presence_top(now, live)
            for shard, chunk in self._chunks(batch):
                keys: list[str] = []
                args: list[Any] = list(top)
                for user, p, devices, _ in chunk:
                    keys += self._keys(user, "presn", "pres", "loc", "meta")
                    args += (p.state, p.status, p.devices, p.ts, len(devices), *devices)
                d = shard.evalsha(S.RESYNC, keys, args)
                d.addCallbacks(answer, fail_all, (chunk,), errbackArgs=(chunk,))

        def answer(out: list[Any], items: list[Any]) -> None:
            for k, item in enumerate(items):
                before, after, flat, last = out[4 * k : 4 * k + 4]
                elsewhere = {
                    name.decode(): _location(at)
                    for name, at in zip(flat[::2], flat[1::2], strict=True)
                }
                change = (_presence(before, now), _presence(after, now))
                item[3].callback(Resynced(change, elsewhere, int(last)))

        self._live(now).addCallbacks(run, fail_all, errbackArgs=(batch,))

    def unlocate(self, user: str, device: str) -> Deferred[None]:
        self._send_locates()
        d = self._user_shard(user).evalsha(
            S.UNLOCATE, [self._key(user, "loc")], [device, self._here]
        )

        def left(n: int) -> None:
            if not n:
                self._index("located", user, False)

        return d.addCallback(left)

    def locations(self, users: list[str]) -> Deferred[dict[str, dict[str, Location]]]:
        def got(found: list[Any]) -> dict[str, dict[str, Location]]:
            live, flat = found
            out: dict[str, dict[str, Location]] = {}
            for user, all_ in zip(users, flat, strict=True):
                devices = {
                    d.decode(): _location(at)
                    for d, at in zip(all_[::2], all_[1::2], strict=True)
                    if at.decode() in live
                }
                if devices:
                    out[user] = devices
            return out

        self._send_locates()
        here = self._each_user(users, lambda u: ("HGETALL", self._key(u, "loc")))
        d = gatherResults([self._turn_live(), here], consumeErrors=True)
        return d.addCallbacks(got, _first_error)

    def presence(self, users: list[str]) -> Deferred[dict[str, Presence]]:
        now = self._clock.seconds()

        def got(values: list[bytes | None], users: list[str]) -> dict[str, Presence]:
            return {u: _presence(v, now) for u, v in zip(users, values, strict=True)}

        # MGET spans key slots: fine on the plain servers we shard over ourselves
        calls = [
            shard.call("MGET", *[self._key(u, "pres") for u in group]).addCallback(got, group)
            for shard, group in self._by_shard(users).items()
        ]
        return _merged(calls)

    def watch(self, watcher: str, users: list[str], cap: int) -> Deferred[bool]:
        shard, key = self._user_shard(watcher), self._key(watcher, "watching")

        def added(new: list[bytes] | None) -> Deferred[bool] | bool:
            if new is None:
                return False
            # then the reverse index, on each watched user's own shard
            return self._each_set([u.decode() for u in new], "add", watcher).addCallback(
                lambda _: True
            )

        return shard.evalsha(S.WATCH, [key], [cap, *users]).addCallback(added)

    def unwatch(self, watcher: str, users: list[str]) -> Deferred[None]:
        if not users:
            return succeed(None)
        d = self._user_shard(watcher).call("SREM", self._key(watcher, "watching"), *users)
        return d.addCallback(
            lambda _: self._each_set(users, "remove", watcher).addCallback(lambda _: None)
        )

    def _each_set(self, users: list[str], op: str, watcher: str) -> Deferred[Any]:
        """Add ``watcher`` to (or remove it from) the watchers of each of ``users``:
        one script per shard per ``RESYNC_CHUNK`` users, not a command per user."""
        calls = [
            shard.evalsha(S.EACH_SET, [self._key(u, "watchers") for u in group], [op, watcher])
            for shard, group in self._chunks(users, _same)
        ]
        if not calls:
            return succeed(None)
        return gatherResults(calls, consumeErrors=True).addErrback(_first_error)

    def watching(self, watcher: str) -> Deferred[frozenset[str]]:
        d = self._user_shard(watcher).call("SMEMBERS", self._key(watcher, "watching"))
        return d.addCallback(lambda ms: frozenset(map(_text, ms)))

    def watchers(self, users: list[str]) -> Deferred[dict[str, frozenset[str]]]:
        """One script per shard per ``RESYNC_CHUNK`` users: a presence flush
        after a resync looks up every user of the node at once."""

        def got(members: list[list[bytes]], group: list[str]) -> dict[str, frozenset[str]]:
            return {
                u: frozenset(map(_text, ms)) for u, ms in zip(group, members, strict=True) if ms
            }

        calls = [
            shard.evalsha(S.MEMBERS, [self._key(u, "watchers") for u in group], []).addCallback(
                got, group
            )
            for shard, group in self._chunks(users, _same)
        ]
        if not calls:
            return succeed({})
        return _merged(calls)

    def _each_user(
        self, users: list[str], command: Callable[[str], tuple[Any, ...]]
    ) -> Deferred[Any]:
        """One command per user, each on its shard; they go out back to back
        (one round trip per shard), and the results come in the order of ``users``."""
        return gatherResults(
            [self._user_shard(u).call(*command(u)) for u in users], consumeErrors=True
        ).addErrback(_first_error)

    # -- node registry -------------------------------------------------------

    def _registry(self) -> tuple[Shard, list[str]]:
        head = f"{self._prefix}:{{nodes}}:"
        return self.shards[0], [head + "records", head + "expires", head + "boots"]

    def heartbeat(self, record: dict[str, Any], ttl: float) -> Deferred[bool]:
        shard, keys = self._registry()
        now = self._clock.seconds()
        expires = now + ttl
        # the keys themselves outlive every record, whoever wrote last
        key_ttl = int((ttl + KEY_TTL_MARGIN) * 1000)
        blob = _json({**record, "boot": self.boot, "expires": expires})
        args = [self.node_id, blob, int(expires * 1000), key_ttl, self.boot, int(now * 1000)]

        def beaten(alive: int) -> bool:
            if not alive:
                # a sweeper may have taken this boot out of the index: in again
                self._indexed = False
            return bool(alive)

        return shard.evalsha(S.BEAT, keys, args).addCallback(beaten)

    def nodes(self) -> Deferred[list[dict[str, Any]]]:
        """The live records, by id; one that is not JSON is left out and logged
        (it must not cost every reader the registry, and with it the sweep)."""
        shard, keys = self._registry()
        now = int(self._clock.seconds() * 1000)

        def got(flat: list[bytes]) -> list[dict[str, Any]]:
            out = []
            for node, blob in sorted(zip(flat[::2], flat[1::2], strict=True)):
                try:
                    out.append(json.loads(blob))
                except ValueError:
                    log.warn("node record of {node!r} left out: not JSON", node=node)
            return out

        return shard.evalsha(S.NODES, keys, [now]).addCallback(got)

    def depart(self) -> Deferred[None]:
        shard, keys = self._registry()
        d = gatherResults(
            [
                shard.call("HDEL", keys[0], self.node_id),
                shard.call("ZREM", keys[1], self.node_id),
                shard.call("HDEL", keys[2], self.node_id),
            ]
        )
        return d.addCallback(lambda _: None)

    # -- app registry ----------------------------------------------------------

    def _apps(self) -> tuple[Shard, list[str]]:
        head = f"{self._prefix}:{{apps}}:"
        return self.shards[0], [head + "registry", head + "version"]

    def apps(self, version: str | None = None) -> Deferred[tuple[str, dict[str, Any] | None]]:
        """The shared app registry: (its version, business id → settings), the
        settings None when ``version`` is still current. A record that is not
        a JSON object with a ``cluster`` is left out and logged."""
        shard, keys = self._apps()

        def got(answer: list[Any]) -> tuple[str, dict[str, Any] | None]:
            current = _text(answer[0])
            if len(answer) == 1:
                return current, None
            flat = answer[1]
            records: dict[str, Any] = {}
            for app, blob in zip(flat[::2], flat[1::2], strict=True):
                try:
                    record = json.loads(blob)
                    if not isinstance(record, dict) or not isinstance(record.get("cluster"), str):
                        raise ValueError("no cluster")
                except ValueError as e:
                    log.warn("app {app!r} left out: {why}", app=app, why=e)
                    continue
                records[_text(app)] = record
            return current, records

        return shard.evalsha(S.APPS, keys, [version or ""]).addCallback(got)

    def put_app(self, app: str, record: dict[str, Any]) -> Deferred[bool]:
        """Add ``app`` or replace its record; whether the registry changed."""
        shard, keys = self._apps()
        blob = json.dumps(record, separators=(",", ":"), sort_keys=True)
        return shard.evalsha(S.APP_EDIT, keys, ["put", app, blob]).addCallback(bool)

    def remove_app(self, app: str) -> Deferred[bool]:
        """Remove ``app``; whether it was there."""
        shard, keys = self._apps()
        return shard.evalsha(S.APP_EDIT, keys, ["remove", app]).addCallback(bool)


def _first_error(f: Failure) -> Failure:
    # gatherResults wraps the first failure; callers want BackendUnavailable itself
    if f.check(FirstError):
        return f.value.subFailure  # type: ignore[no-any-return]
    return f


def _merged(calls: list[Deferred[dict[Any, Any]]]) -> Deferred[dict[Any, Any]]:
    if len(calls) == 1:
        return calls[0]

    def merge(parts: list[dict[Any, Any]]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for part in parts:
            out.update(part)
        return out

    return gatherResults(calls, consumeErrors=True).addCallbacks(merge, _first_error)


def _merged_pairs(
    parts: list[tuple[dict[str, list[int]], dict[str, int]]],
) -> tuple[dict[str, list[int]], dict[str, int]]:
    seqs: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for s, c in parts:
        seqs.update(s)
        counts.update(c)
    return seqs, counts


def _receipt(r: Any) -> Receipt | None:
    if r == 0:
        return None
    mid, ts, status = r
    return Receipt(mid.decode(), int(ts), status.decode() or None)


def _location(value: bytes) -> Location:
    node, _, boot = value.decode().rpartition("/")
    return Location(node, boot)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _presence(value: bytes | None, now: float) -> Presence:
    if value is None:
        return OFFLINE
    try:
        state, status, devices, ts, *expires = json.loads(value)
    except ValueError:  # a record of an older release, in CBOR
        state, status, devices, ts, *expires = cbor2.loads(value)
    if expires and expires[0] <= now:
        return OFFLINE  # an offline record past its day: as if never seen
    return Presence(state, status, devices, ts)
