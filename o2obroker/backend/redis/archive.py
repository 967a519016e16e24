"""IArchive on Redis: a stream per conversation and per room, capped by count and age.

A thread (``c/<a>/<b>`` or ``r/<room>``, o2obroker/backend/archive.py) has two
keys under the hash tag ``{a:<thread>}``, on the shard a consistent hash of
that tag picks:

``P:{a:<thread>}:arc``  stream; fields ``t`` (ts, ms), ``i`` (mid), ``m`` (CBOR)
``P:{a:<thread>}:ids``  hash mid -> stream entry id, for ``before`` and the dedupe

Entry ids are Redis's own (``*``): they only order a thread's entries; ages are
the messages' ``ts``, read against the node's clock, as the inboxes' are. The
scripts reach a server by EVALSHA, and by EVAL the first time on each
connection (the shard retries on NOSCRIPT). An add is one script per shard,
whatever the number of threads and messages; a page is one script. Both keys
expire when a thread has not been written to for ``max_age``, so abandoned
threads leave nothing behind.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from o2obroker.backend.archive import IArchive, thread_of
from o2obroker.backend.interface import StoredMessage
from o2obroker.backend.redis.backend import KEY_TTL_MARGIN, RedisBackend, shard_of
from o2obroker.backend.redis.scripts import Script

#: messages one add script takes at most (a thread's messages are never split):
#: Redis runs nothing else while a script runs
CHUNK = 1000
_HEAD = struct.Struct(">IdI")

# Drop a thread's oldest entries: the first ``n``, and then every one older
# than the horizon; their mids leave the index with them.
_TRIM = """
local function drop(stream, index, entries)
  for i = 1, #entries do
    redis.call('HDEL', index, entries[i][2][4])
    redis.call('XDEL', stream, entries[i][1])
  end
end
local function trim(stream, index, extra, horizon)
  if extra > 0 then drop(stream, index, redis.call('XRANGE', stream, '-', '+', 'COUNT', extra)) end
  -- the common case: the oldest entry is young, one entry read
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) > horizon then return end
  while true do
    local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
    if #batch == 0 then return end
    local old = 0
    for i = 1, #batch do
      if tonumber(batch[i][2][2]) > horizon then break end
      old = i
    end
    if old == 0 then return end
    if old < #batch then
      local kept = {}
      for i = 1, old do kept[i] = batch[i] end
      drop(stream, index, kept)
      return
    end
    drop(stream, index, batch)
  end
end
"""

# KEYS: stream and index of each thread, in pairs. ARGV: cap, horizon (ms),
# key ttl (ms), then per thread its messages packed in one string: each the
# mid's length, ts and the CBOR's length ('>I4dI4'), the mid, the CBOR.
# Returns the number of messages added (a mid already archived is not added again).
ADD = Script(
    "archive_add",
    _TRIM
    + """
local cap, horizon, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local added = 0
for k = 1, #KEYS, 2 do
  local stream, index = KEYS[k], KEYS[k + 1]
  local data = ARGV[3 + (k + 1) / 2]
  local pos = 1
  while pos <= #data do
    local ml, ts, bl
    ml, ts, bl, pos = struct.unpack('>I4dI4', data, pos)
    local mid = string.sub(data, pos, pos + ml - 1)
    if redis.call('HEXISTS', index, mid) == 0 then
      local id = redis.call('XADD', stream, '*', 't', string.format('%.0f', ts), 'i', mid,
                            'm', string.sub(data, pos + ml, pos + ml + bl - 1))
      redis.call('HSET', index, mid, id)
      added = added + 1
    end
    pos = pos + ml + bl
  end
  trim(stream, index, redis.call('XLEN', stream) - cap, horizon)
  if redis.call('XLEN', stream) > 0 then
    redis.call('PEXPIRE', stream, ttl)
    redis.call('PEXPIRE', index, ttl)
  end
end
return added
""",
)

# KEYS: stream, index. ARGV: horizon (ms), before (a mid, or ''), limit.
# Returns {more (0 or 1), CBOR of each message, newest first}.
PAGE = Script(
    "archive_page",
    _TRIM
    + """
local stream, index = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[3])
trim(stream, index, 0, tonumber(ARGV[1]))
local top = '+'
if ARGV[2] ~= '' then
  local id = redis.call('HGET', index, ARGV[2])
  if not id then return {0} end
  top = '(' .. id
end
local entries = redis.call('XREVRANGE', stream, top, '-', 'COUNT', limit + 1)
local out = {0}
for i = 1, math.min(#entries, limit) do out[i + 1] = entries[i][2][6] end
if #entries > limit then out[1] = 1 end
return out
""",
)


def _packed(m: StoredMessage) -> bytes:
    mid = m.mid.encode()
    blob = cbor2.dumps([m.mid, m.ts, m.fields])
    return _HEAD.pack(len(mid), m.ts, len(blob)) + mid + blob


def _message(blob: bytes) -> StoredMessage:
    mid, ts, fields = cbor2.loads(blob)
    return StoredMessage(mid, ts, fields)


@implementer(IArchive)
class RedisArchive:
    """The archive of a Redis backend's nodes, on that backend's servers.

    ``clock`` is the node's (ages are read against it); the connections are
    the backend's shards, so the archive is up, down and reconnected with them.
    """

    def __init__(
        self,
        backend: RedisBackend,
        clock: IReactorTime,
        *,
        max_messages: int = 1000,
        max_age: float = 7 * 86400.0,
        prefix: str | None = None,
    ) -> None:
        self._shards = backend.shards
        self._clock = clock
        self._prefix = prefix if prefix is not None else backend._prefix
        self.max_messages = max_messages
        self.max_age = max_age
        self._key_ttl = int((max_age + KEY_TTL_MARGIN) * 1000)

    def _where(self, thread: str) -> tuple[Any, list[str]]:
        shards = self._shards
        tag = "a:" + thread
        shard = shards[0] if len(shards) == 1 else shards[shard_of(tag, len(shards))]
        head = f"{self._prefix}:{{{tag}}}:"
        return shard, [head + "arc", head + "ids"]

    def _horizon(self) -> int:
        return int((self._clock.seconds() - self.max_age) * 1000)

    def add(self, messages: list[StoredMessage]) -> Deferred[Any]:
        if not messages:
            return succeed(0)
        # per thread (in first-seen order) its messages in order, then per shard
        threads: dict[str, list[StoredMessage]] = {}
        for m in messages:
            thread = thread_of(m.fields)
            its = threads.get(thread)
            if its is None:
                threads[thread] = [m]
            else:
                its.append(m)
        head = [self.max_messages, self._horizon(), self._key_ttl]
        # per shard, the keys and args of the script being filled, and its size
        filling: dict[Any, tuple[list[str], list[Any], list[int]]] = {}
        calls = []
        for thread, its in threads.items():
            shard, keys = self._where(thread)
            call = filling.get(shard)
            if call is None or (call[2][0] and call[2][0] + len(its) > CHUNK):
                if call is not None:
                    calls.append(shard.evalsha(ADD, call[0], call[1]))
                call = filling[shard] = ([], list(head), [0])
            call[0].extend(keys)
            call[1].append(b"".join(map(_packed, its)))
            call[2][0] += len(its)
        calls += [shard.evalsha(ADD, keys, args) for shard, (keys, args, _) in filling.items()]
        if len(calls) == 1:
            return calls[0]
        return gatherResults(calls, consumeErrors=True).addCallback(sum)

    def page(self, thread: str, before: str | None, limit: int) -> Deferred[Any]:
        shard, keys = self._where(thread)
        d = shard.evalsha(PAGE, keys, [self._horizon(), before or "", limit])
        return d.addCallback(lambda r: ([_message(b) for b in r[1:]], bool(r[0])))
