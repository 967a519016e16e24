"""The Lua scripts of the Redis backend: each step on a user's state is one script.

Every key a script touches is passed in KEYS, and the keys of one user share
the hash tag ``{u:<id>}``, so a per-user script stays on one key slot. Time
comes from the caller (ARGV), never from Redis's clock: the node's clock is
the one that stamps messages, and tests drive it.

A user's keys (``P`` is the prefix, ``o2o`` by default):

``P:{u:<id>}:meta``      hash ``last`` (highest seq ever given), ``epoch``
``P:{u:<id>}:inbox``     stream; entry id ``<seq>-0``, fields ``t`` (ts, ms), ``m`` (CBOR)
``P:{u:<id>}:cur``       hash device -> cursor
``P:{u:<id>}:seen``      hash device -> last seen (seconds)
``P:{u:<id>}:sid``       hash send id -> ``<expires>\\n<ts>\\n<mid>``
``P:{u:<id>}:sidq``      list of send ids, oldest first (expiry and cap in order)
``P:{u:<id>}:sst``       hash send id -> final status
``P:{u:<id>}:pres``      string, the user-level presence watchers last heard of (JSON)
``P:{u:<id>}:presn``     hash ``<node>/<boot>`` -> that node's part of the user's presence (JSON)
``P:{u:<id>}:loc``       hash device -> ``<node>/<boot>`` where it is live
``P:{u:<id>}:watching``  set of users this user watches
``P:{u:<id>}:watchers``  set of users watching this user
``P:{r:<name>}:members`` set of member users of a room

A user's channel, ``P:{u:<id>}``, carries what is stored for the user to the
nodes that have a live device of it.

The node registry, small and on the first shard:

``P:{nodes}:records``    hash node id -> its record (JSON)
``P:{nodes}:expires``    sorted set node id -> when its record lapses (ms)
``P:{nodes}:boots``      hash node id -> the boot id of its last beat
``P:{nodes}:parted``     set of ``<node>/<boot>`` that recorded presence parts or locations
``P:{nodes}:parts:<nb>`` set of users ``<node>/<boot>`` has a presence part of
``P:{nodes}:located:<nb>`` set of users ``<node>/<boot>`` has a live device of
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Drop entries from the front of an inbox while their ts is below the horizon.
_EXPIRE_FRONT = """
local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end
local function expire_front(inbox, horizon)
  -- the common case: the oldest entry is young, one entry read
  local head = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= horizon then return end
  while true do
    local batch = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 64)
    if #batch == 0 then return end
    for i = 1, #batch do
      if tonumber(batch[i][2][2]) >= horizon then
        if i > 1 then redis.call('XTRIM', inbox, 'MINID', batch[i][1]) end
        return
      end
    end
    redis.call('XTRIM', inbox, 'MINID', (seq_of(batch[#batch][1]) + 1) .. '-0')
  end
end
"""

# KEYS: meta, inbox per user. ARGV: horizon, cap, key ttl (ms), epoch, the
# head of a channel payload (empty: publish nothing), then per user: n, its
# channel, and the n messages packed in one string, each a big-endian double
# (ts), a 1-byte and a 4-byte length, the device not to write it to and its
# CBOR (one argument per user, not several per message: building a command
# costs the client per argument). The inbox keeps the CBOR; with a head, the
# channel gets head, the first seq (a double) and the packed string as it
# came, so the bytes stored and published are encoded once, by the sender.
# Returns per user its first seq and how many subscribers got the publish.
APPEND = Script(
    "append",
    _EXPIRE_FRONT
    + """
local horizon, cap, ttl, epoch = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local head = ARGV[5]
local out = {}
local a = 6
for k = 1, #KEYS, 2 do
  local meta, inbox = KEYS[k], KEYS[k + 1]
  local n, channel, data = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  if redis.call('HSETNX', meta, 'epoch', epoch) == 1 then
    -- a new epoch: whatever an inbox holds without its meta belongs to no seq
    redis.call('DEL', inbox)
  end
  local last = redis.call('HINCRBY', meta, 'last', n)
  local first = last - n + 1
  local seq, pos = first - 1, 1
  for i = 1, n do
    local ts, skip, len
    ts, skip, len, pos = struct.unpack('>dBI4', data, pos)
    pos = pos + skip
    seq = seq + 1
    redis.call('XADD', inbox, seq .. '-0', 't', string.format('%.0f', ts),
               'm', string.sub(data, pos, pos + len - 1))
    pos = pos + len
  end
  local got = 0
  if n > 0 then
    redis.call('XTRIM', inbox, 'MAXLEN', cap)
    expire_front(inbox, horizon)
    redis.call('PEXPIRE', inbox, ttl)
    if head ~= '' then
      got = redis.call('PUBLISH', channel, head .. struct.pack('>d', first) .. data)
    end
  end
  out[#out + 1] = first
  out[#out + 1] = got
end
return out
""",
)

# KEYS: meta, inbox. ARGV: horizon, after, limit. Returns XRANGE entries.
READ = Script(
    "read",
    _EXPIRE_FRONT
    + """
expire_front(KEYS[2], tonumber(ARGV[1]))
local limit = tonumber(ARGV[3])
if limit <= 0 then return {} end
local start = math.max(tonumber(ARGV[2]) + 1, 0)
return redis.call('XRANGE', KEYS[2], start .. '-0', '+', 'COUNT', limit)
""",
)

# KEYS: meta, inbox per call. ARGV: horizon, the epoch for a user without one
# (as in ``APPEND``, one for all the users of a call). For each ``inbox_state``
# call of a reactor turn, in their order: expire the inbox's front, give a new
# user its epoch (whatever an inbox holds without its meta belongs to no seq)
# and read its highest seq, its lowest kept and its epoch. Returns last,
# first, epoch of each, flat.
STATE_MANY = Script(
    "state_many",
    _EXPIRE_FRONT
    + """
local horizon, epoch = tonumber(ARGV[1]), ARGV[2]
local out = {}
for k = 1, #KEYS, 2 do
  local meta, inbox = KEYS[k], KEYS[k + 1]
  expire_front(inbox, horizon)
  if redis.call('HSETNX', meta, 'epoch', epoch) == 1 then
    redis.call('DEL', inbox)
  end
  local last = tonumber(redis.call('HGET', meta, 'last') or '0')
  local first = last + 1
  local head = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)
  if #head > 0 then first = seq_of(head[1][1]) end
  out[#out + 1] = last
  out[#out + 1] = first
  out[#out + 1] = redis.call('HGET', meta, 'epoch')
end
return out
""",
)

# KEYS: cur. ARGV: device. The device's cursor, else the highest of the others.
CURSOR = Script(
    "cursor",
    """
local c = redis.call('HGET', KEYS[1], ARGV[1])
if c then return tonumber(c) end
local best = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local x = tonumber(v)
  if x > best then best = x end
end
return best
""",
)

# KEYS: meta, inbox, cur, seen. ARGV: device, seq, now, device horizon, mode
# ('ack': never backwards; 'set': even backwards), key ttl (ms). Returns the cursor.
MOVE = Script(
    "move",
    """
local meta, inbox, cur, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local device = ARGV[1]
local last = tonumber(redis.call('HGET', meta, 'last') or '0')
local seq = math.min(tonumber(ARGV[2]), last)
local known = redis.call('HGET', cur, device)
local cursor = tonumber(known or '0')
redis.call('HSET', seen, device, ARGV[3])
local forward = seq > cursor
if ARGV[5] == 'set' then
  cursor = math.max(seq, 0)
elseif forward then
  cursor = seq
end
redis.call('HSET', cur, device, cursor)
if forward then
  -- devices not seen for device_ttl no longer hold messages back
  local horizon = tonumber(ARGV[4])
  local all = redis.call('HGETALL', seen)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < horizon then
      redis.call('HDEL', seen, all[i])
      redis.call('HDEL', cur, all[i])
    end
  end
  local floor = nil
  for _, v in ipairs(redis.call('HVALS', cur)) do
    local x = tonumber(v)
    if floor == nil or x < floor then floor = x end
  end
  if floor ~= nil and floor > 0 then
    redis.call('XTRIM', inbox, 'MINID', (floor + 1) .. '-0')
  end
end
redis.call('PEXPIRE', cur, ARGV[6])
redis.call('PEXPIRE', seen, ARGV[6])
return cursor
""",
)

# Pairs of strings packed in one argument, each pair two big-endian 4-byte
# lengths and then the two strings: one argument for a batch, whatever its size.
_PAIRS = """
local function pairs_of(data)
  local out, pos = {}, 1
  while pos <= #data do
    local a, b
    a, b, pos = struct.unpack('>I4I4', data, pos)
    out[#out + 1] = {string.sub(data, pos, pos + a - 1), string.sub(data, pos + a, pos + a + b - 1)}
    pos = pos + a + b
  end
  return out
end
"""

# Commands that take many fields get them CHUNK at a time: one command per
# chunk, not per send id (a script's own calls cost Redis per call), and never
# more arguments than Lua's stack holds.
_CHUNKS = """
local CHUNK = 1000
local function each_chunk(n, f)
  for first = 1, n, CHUNK do f(first, math.min(first + CHUNK - 1, n)) end
end
"""

# KEYS: sid, sidq, sst. ARGV: now, expires, cap, ts, key ttl (ms), packed pairs
# (send id, mid). Returns per pair 0 (new) or {mid, ts, status or ''}.
CLAIM = Script(
    "claim",
    _PAIRS
    + _CHUNKS
    + """
local sid, sidq, sst = KEYS[1], KEYS[2], KEYS[3]
local now, expires, cap, ts = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local function expire()
  while true do
    local n = redis.call('LLEN', sidq)
    if n == 0 then return end
    local id = redis.call('LINDEX', sidq, 0)
    local v = redis.call('HGET', sid, id)
    if v and n <= cap and tonumber(string.match(v, '^([^\\n]*)')) > now then return end
    redis.call('LPOP', sidq)
    redis.call('HDEL', sid, id)
    redis.call('HDEL', sst, id)
  end
end
expire()
local claims = pairs_of(ARGV[6])
local ids = {}
for i = 1, #claims do ids[i] = claims[i][1] end
local out, fresh, records, queue = {}, {}, {}, {}
each_chunk(#ids, function(first, last)
  local kept = redis.call('HMGET', sid, unpack(ids, first, last))
  for i = first, last do
    local id, v = ids[i], kept[i - first + 1]
    if v then
      local _, _, t, mid = string.find(v, '^[^\\n]*\\n([^\\n]*)\\n(.*)$')
      out[i] = {mid, t, redis.call('HGET', sst, id) or ''}
    elseif fresh[id] then
      -- the same id twice in one batch: the second is a repeat of the first
      out[i] = {fresh[id], ts, ''}
    else
      fresh[id] = claims[i][2]
      records[#records + 1] = id
      records[#records + 1] = expires .. '\\n' .. ts .. '\\n' .. claims[i][2]
      queue[#queue + 1] = id
      out[i] = 0
    end
  end
end)
each_chunk(#queue, function(first, last)
  redis.call('HSET', sid, unpack(records, 2 * first - 1, 2 * last))
  redis.call('RPUSH', sidq, unpack(queue, first, last))
end)
if redis.call('LLEN', sidq) > cap then expire() end
redis.call('PEXPIRE', sid, ARGV[5])
redis.call('PEXPIRE', sidq, ARGV[5])
redis.call('PEXPIRE', sst, ARGV[5])
return out
""",
)

# KEYS: sid, sst. ARGV: packed pairs (send id, status); ids no longer kept are skipped.
SETTLE = Script(
    "settle",
    _PAIRS
    + _CHUNKS
    + """
local settled = pairs_of(ARGV[1])
each_chunk(#settled, function(first, last)
  local ids = {}
  for i = first, last do ids[#ids + 1] = settled[i][1] end
  local kept = redis.call('HMGET', KEYS[1], unpack(ids))
  local statuses = {}
  for i = first, last do
    if kept[i - first + 1] then
      statuses[#statuses + 1] = settled[i][1]
      statuses[#statuses + 1] = settled[i][2]
    end
  end
  if #statuses > 0 then redis.call('HSET', KEYS[2], unpack(statuses)) end
end)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 0
""",
)

# KEYS: members. ARGV: 'join' or 'leave', user. Returns the member count.
MEMBERSHIP = Script(
    "membership",
    """
if ARGV[1] == 'join' then
  redis.call('SADD', KEYS[1], ARGV[2])
else
  redis.call('SREM', KEYS[1], ARGV[2])
end
return redis.call('SCARD', KEYS[1])
""",
)

# KEYS: sets. Returns the members of each (a look-up of many users' watchers).
MEMBERS = Script(
    "members",
    """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('SMEMBERS', KEYS[i]) end
return out
""",
)

# KEYS: sets. ARGV: 'add' or 'remove', a member. Adds the member to (or
# removes it from) each set: a watch list's reverse index, one script per
# shard for all the watched users there, not one command each.
EACH_SET = Script(
    "each_set",
    """
local op = ARGV[1] == 'add' and 'SADD' or 'SREM'
for i = 1, #KEYS do redis.call(op, KEYS[i], ARGV[2]) end
return 0
""",
)

# KEYS: watching. ARGV: cap, users. Returns the users newly added, or nil (and
# no change) when the list would pass cap.
WATCH = Script(
    "watch",
    """
local cap = tonumber(ARGV[1])
local new, seen = {}, {}
for i = 2, #ARGV do
  local u = ARGV[i]
  if not seen[u] and redis.call('SISMEMBER', KEYS[1], u) == 0 then
    new[#new + 1] = u
  end
  seen[u] = true
end
if redis.call('SCARD', KEYS[1]) + #new > cap then return false end
for _, u in ipairs(new) do redis.call('SADD', KEYS[1], u) end
return new
""",
)

# KEYS: records, expires, boots. ARGV: node id, record, expires (ms), key ttl
# (ms), boot id, now (ms). A beat of a new boot replaces the old one's at once.
# Returns 1 when this boot's record was alive until now, else 0.
BEAT = Script(
    "beat",
    """
local was = redis.call('ZSCORE', KEYS[2], ARGV[1])
local boot = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
if was and tonumber(was) > tonumber(ARGV[6]) and boot == ARGV[5] then return 1 end
return 0
""",
)

# KEYS: records, expires, boots. ARGV: now (ms). Forgets the records that
# lapsed; returns the others as id, record, id, record...
NODES = Script(
    "nodes",
    """
local now = ARGV[1]
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
end
local live = redis.call('ZRANGE', KEYS[2], 0, -1)
if #live == 0 then return {} end
local records = redis.call('HMGET', KEYS[1], unpack(live))
local out = {}
for i = 1, #live do
  if records[i] then
    out[#out + 1] = live[i]
    out[#out + 1] = records[i]
  end
end
return out
""",
)

# KEYS: expires, boots. ARGV: now (ms). Returns ``<node>/<boot>`` of each live
# node: what presence parts and locations are keyed by.
LIVE = Script(
    "live",
    """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #live == 0 then return {} end
local boots = redis.call('HMGET', KEYS[2], unpack(live))
local out = {}
for i = 1, #live do
  if boots[i] then out[#out + 1] = live[i] .. '/' .. boots[i] end
end
return out
""",
)

# KEYS: none. ARGV: channel, payload, channel, payload... Returns the receiver
# count of each PUBLISH: the nodes subscribed to that user's channel.
PUBLISH = Script(
    "publish",
    """
local out = {}
for i = 1, #ARGV, 2 do
  out[#out + 1] = redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return out
""",
)

# Records ``node``'s part of a user's presence and merges the parts of live
# nodes (``live``: a set of ``<node>/<boot>``) by the rule of doc/protocol.md
# section 5 (the latest ts wins a status text). Returns the user-level record
# before and after, as JSON [state, status, devices, ts]; ts moves only when
# state or status changed.
_MERGE = """
local rank = {online = 3, busy = 2, away = 1, offline = 0}
local function merge(parts, pres, node, state, status, devices, ts, now, expires, ttl, live)
  if devices == 0 and state == 'offline' then
    redis.call('HDEL', parts, node)
  else
    redis.call('HSET', parts, node, cjson.encode({state, status, devices, ts}))
  end
  local best, text, bts, count = 'offline', '', -1, 0
  local all = redis.call('HGETALL', parts)
  for i = 1, #all, 2 do
    if live[all[i]] then
      local p = cjson.decode(all[i + 1])
      local r = rank[p[1]]
      if r > 0 then
        count = count + p[3]
        if r > rank[best] or (r == rank[best] and p[4] > bts) then
          best, text, bts = p[1], p[2], p[4]
        end
      end
    end
  end
  local before = {'offline', '', 0, 0}
  local raw = redis.call('GET', pres)
  if raw then
    -- a record of an older release (CBOR) reads as offline: it is rewritten below
    local ok, old = pcall(cjson.decode, raw)
    if ok and type(old) == 'table' and (not old[5] or old[5] > now) then
      before = {old[1], old[2], old[3], old[4]}
    end
  end
  local at = before[4]
  if best ~= before[1] or text ~= before[2] then at = ts end
  local after = {best, text, count, at}
  if count == 0 and best == 'offline' then
    if at == 0 then
      redis.call('DEL', pres)
    else
      redis.call('SET', pres, cjson.encode({best, text, 0, at, expires}), 'PX', ttl)
    end
  else
    redis.call('SET', pres, cjson.encode(after))
  end
  return {cjson.encode(before), cjson.encode(after)}
end
"""

# Locates each of ``devices`` (a Lua list) here unless a live node holds it;
# returns device, location of those, flat.
_RELOCATE = """
local function relocate(loc, here, devices, live)
  local out = {}
  for _, device in ipairs(devices) do
    local at = redis.call('HGET', loc, device)
    if at and at ~= here and live[at] then
      out[#out + 1] = device
      out[#out + 1] = at
    elseif at ~= here then
      redis.call('HSET', loc, device, here)
    end
  end
  return out
end
"""

# KEYS: parts, pres. ARGV: node (``<node>/<boot>``), state, status, devices, ts
# (ms), now (s), offline expires (s), offline key ttl (ms), then the
# ``<node>/<boot>`` of the live nodes. ``merge`` above, for one user.
MERGE_PRESENCE = Script(
    "merge_presence",
    _MERGE
    + """
local live = {}
for i = 9, #ARGV do live[ARGV[i]] = true end
return merge(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
             tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], live)
""",
)

# The arguments every presence merge of a batch shares (RedisBackend._presence_top):
# this boot, now, the offline record's expiry and key ttl, the live boots; ``a``
# is the index of the first call's own arguments.
_PRESENCE_TOP = """
local here, now, expires, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local l = tonumber(ARGV[5])
local live = {}
for i = 6, 5 + l do live[ARGV[i]] = true end
local a = 6 + l
"""

# KEYS: parts, pres per call. ARGV: ``<node>/<boot>`` of this node, now (s),
# offline expires (s), offline key ttl (ms), the number l of live nodes and
# their ``<node>/<boot>``, then per call its part (state, status, devices, ts
# (ms)). ``merge`` for each call of a reactor turn, in their order; returns
# before and after of each, flat.
MERGE_MANY = Script(
    "merge_many",
    _MERGE
    + _PRESENCE_TOP
    + """
local out = {}
for k = 1, #KEYS, 2 do
  local pair = merge(KEYS[k], KEYS[k + 1], here, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]),
                     tonumber(ARGV[a + 3]), now, expires, ttl, live)
  a = a + 4
  out[#out + 1] = pair[1]
  out[#out + 1] = pair[2]
end
return out
""",
)

# KEYS: parts, pres, loc, meta per user. ARGV: ``<node>/<boot>`` of this node,
# now (s), offline expires (s), offline key ttl (ms), the number l of live
# nodes and their ``<node>/<boot>``, then per user its part (state, status,
# devices, ts (ms)), the number n of its devices and the n devices.
# A node's resync of many users after a resubscribe or a rejoin: per user
# ``merge`` its part, ``relocate`` its devices and read its inbox's highest
# seq. Returns per user: before, after (as merge), the flat list of devices
# located elsewhere (as relocate), the highest seq.
RESYNC = Script(
    "resync",
    _MERGE
    + _RELOCATE
    + _PRESENCE_TOP
    + """
local out = {}
for k = 1, #KEYS, 4 do
  local pair = merge(KEYS[k], KEYS[k + 1], here, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]),
                     tonumber(ARGV[a + 3]), now, expires, ttl, live)
  local n = tonumber(ARGV[a + 4])
  local devices = {}
  for i = 1, n do devices[i] = ARGV[a + 4 + i] end
  a = a + 5 + n
  out[#out + 1] = pair[1]
  out[#out + 1] = pair[2]
  out[#out + 1] = relocate(KEYS[k + 2], here, devices, live)
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[k + 3], 'last') or '0')
end
return out
""",
)

# KEYS: loc per call. ARGV: ``<node>/<boot>`` of this node, then the device of
# each call. ``locate`` for each call of a reactor turn, in their order;
# returns per call where the device was before when that was elsewhere, else ''.
LOCATE_MANY = Script(
    "locate_many",
    """
local here = ARGV[1]
local out = {}
for k = 1, #KEYS do
  local before = redis.call('HGET', KEYS[k], ARGV[k + 1])
  redis.call('HSET', KEYS[k], ARGV[k + 1], here)
  if before == here or not before then before = '' end
  out[k] = before
end
return out
""",
)

# KEYS: loc. ARGV: ``<node>/<boot>`` of this node, the number n of devices, the
# n devices, then the ``<node>/<boot>`` of the live nodes. ``relocate`` above.
RELOCATE = Script(
    "relocate",
    _RELOCATE
    + """
local n = tonumber(ARGV[2])
local devices, live = {}, {}
for i = 3, 2 + n do devices[#devices + 1] = ARGV[i] end
for i = 3 + n, #ARGV do live[ARGV[i]] = true end
return relocate(KEYS[1], ARGV[1], devices, live)
""",
)

# KEYS: loc. ARGV: device, ``<node>/<boot>``. Forgets the device if it is still
# there; returns how many devices of the user are left there.
UNLOCATE = Script(
    "unlocate",
    """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local left = 0
for _, at in ipairs(redis.call('HVALS', KEYS[1])) do
  if at == ARGV[2] then left = left + 1 end
end
return left
""",
)

# KEYS: loc. ARGV: ``<node>/<boot>`` of a dead node. Forgets its devices.
DROP_LOCATIONS = Script(
    "drop_locations",
    """
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
return 0
""",
)

# KEYS: apps, version. ARGV: the version the caller holds. The version alone
# when it is current, else the version and every app, id, record, id, record...
APPS = Script(
    "apps",
    """
local v = redis.call('GET', KEYS[2]) or '0'
if v == ARGV[1] then return {v} end
return {v, redis.call('HGETALL', KEYS[1])}
""",
)

# KEYS: apps, version. ARGV: 'put', id, record | 'remove', id. 1 when the
# registry changed (a record put, or one removed), else 0; the version grows on a change.
APP_EDIT = Script(
    "app_edit",
    """
local changed
if ARGV[1] == 'put' then
  changed = redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3]
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2]) == 1
end
if changed then
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
""",
)

ALL = (
    APPEND,
    READ,
    STATE_MANY,
    CURSOR,
    MOVE,
    CLAIM,
    SETTLE,
    MEMBERSHIP,
    MEMBERS,
    EACH_SET,
    WATCH,
    BEAT,
    NODES,
    LIVE,
    PUBLISH,
    MERGE_PRESENCE,
    MERGE_MANY,
    LOCATE_MANY,
    RELOCATE,
    RESYNC,
    UNLOCATE,
    DROP_LOCATIONS,
    APPS,
    APP_EDIT,
)
