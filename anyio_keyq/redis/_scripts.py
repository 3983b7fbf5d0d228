"""The Lua scripts that change a queue's state in Redis, each in one atomic step.

Every key of a queue starts with the same prefix, ``keyq:{<name>}:``; the braces make
``<name>`` the hash tag, so all of a queue's keys live in one slot of a Redis Cluster.
The queue's fixed keys are passed in ``KEYS`` (in the order of :data:`FIXED_KEYS`);
the per-key and per-job keys are built inside the scripts from the prefix in
``ARGV[1]`` and share the hash tag.

Key layout (``P`` is the prefix):

``P seq``       string: the last job id handed out (``INCR``)
``P fence``     string: the last fencing token handed out (``INCR``)
``P ready``     sorted set: keys whose head job may be claimed, scored by the time
                (ms, server clock) from which it may run
``P leases``    sorted set: keys whose head job is leased, scored by lease expiry (ms)
``P owner``     hash: key -> fencing token of the lease holder
``P dead``      sorted set: dead-lettered job ids, scored by the time they died
``P wake``      list: wake-up tokens for idle workers (``BLPOP``), at most 64
``P lane:<key>``  list: the key's job ids, oldest first; the head is the one
                  that runs (it stays there while it runs)
``P job:<id>``    hash: ``key``, ``task``, ``payload``, ``fmt``, ``enq``,
                  ``attempts`` (runs started), ``fails`` (runs that raised),
                  ``delay`` (the last retry delay), ``error``, ``idem``; a dead job also
                  ``reason`` and ``died``
``P idem:<k>``    string with a time to live: the job id enqueued under an
                  idempotency key

A non-empty lane is in exactly one of ``ready`` and ``leases``; an empty lane has no
key at all. ``seq`` and ``fence`` are the only keys an idle queue keeps (and the
idempotency keys until they expire, and the dead letters until they are removed).
"""

from __future__ import annotations

FIXED_KEYS = ("seq", "fence", "ready", "leases", "owner", "dead", "wake")

_COMMON = """
local P = ARGV[1]
local SEQ, FENCE, READY, LEASES, OWNER, DEAD, WAKE =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function wake()
    redis.call('RPUSH', WAKE, '1')
    redis.call('LTRIM', WAKE, -64, -1)
end
-- A key whose lease ends: back to ready (at `at`) if it has jobs, else nothing left.
local function unlease(lane, at)
    redis.call('ZREM', LEASES, lane)
    redis.call('HDEL', OWNER, lane)
    if redis.call('EXISTS', P .. 'lane:' .. lane) == 1 then
        redis.call('ZADD', READY, at, lane)
    end
    if redis.call('ZCARD', READY) > 0 then
        wake()
    elseif redis.call('ZCARD', LEASES) == 0 then
        redis.call('DEL', WAKE)
    end
end
local function holds(lane, token)
    return redis.call('HGET', OWNER, lane) == token
end
"""

#: ARGV: prefix, idempotency ttl (ms), then per job: key, task, payload, fmt, idem
#: ('' for none). Returns a flat list: id, 1 if new else 0, per job.
ENQUEUE = (
    _COMMON
    + """
local ttl = tonumber(ARGV[2])
local now = now_ms()
local out = {}
local i = 3
while i <= #ARGV do
    local key, task, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local fmt, idem = ARGV[i + 3], ARGV[i + 4]
    i = i + 5
    local existing = false
    if idem ~= '' then existing = redis.call('GET', P .. 'idem:' .. idem) end
    if existing then
        out[#out + 1] = existing
        out[#out + 1] = 0
    else
        local id = tostring(redis.call('INCR', SEQ))
        local job = P .. 'job:' .. id
        redis.call('HSET', job, 'key', key, 'task', task, 'payload', payload, 'fmt', fmt,
            'enq', now, 'attempts', 0)
        if idem ~= '' then
            redis.call('SET', P .. 'idem:' .. idem, id, 'PX', ttl)
            redis.call('HSET', job, 'idem', idem)
        end
        if redis.call('RPUSH', P .. 'lane:' .. key, id) == 1 then
            redis.call('ZADD', READY, now, key)
            wake()
        end
        out[#out + 1] = id
        out[#out + 1] = 1
    end
end
return out
"""
)

#: ARGV: prefix, lease (ms), count, max_active (0: no cap).
#: Returns: {hint_ms, job...} where each job is {key, id, token, attempts, fails, task,
#: payload, fmt, enq, delay} (task false when the job's data is missing), and hint_ms
#: is how long until the next key becomes ready (-1: none ready later; 0: capped).
CLAIM = (
    _COMMON
    + """
local lease, count, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
-- Recover expired leases: their keys become ready again, their head runs again.
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 100)
for _, lane in ipairs(expired) do unlease(lane, now) end
local out = {-1}
local n = 0
while n < count do
    if cap > 0 and redis.call('ZCARD', LEASES) >= cap then
        out[1] = 0
        break
    end
    local r = redis.call('ZRANGEBYSCORE', READY, '-inf', now, 'LIMIT', 0, 1)
    if #r == 0 then break end
    local lane = r[1]
    redis.call('ZREM', READY, lane)
    local lk = P .. 'lane:' .. lane
    if redis.call('TYPE', lk)['ok'] == 'list' then
        local id = redis.call('LINDEX', lk, 0)
        local job = P .. 'job:' .. id
        local token = redis.call('INCR', FENCE)
        redis.call('ZADD', LEASES, now + lease, lane)
        redis.call('HSET', OWNER, lane, token)
        local f = redis.call('HMGET', job, 'task', 'payload', 'fmt', 'enq', 'delay', 'attempts',
            'fails')
        local attempts = tonumber(f[6])
        if attempts then
            attempts = attempts + 1
            redis.call('HSET', job, 'attempts', attempts)
        else
            attempts = 1
        end
        out[#out + 1] = {lane, id, token, attempts, f[7], f[1], f[2], f[3], f[4], f[5]}
        n = n + 1
    end
end
if out[1] == -1 and n < count then
    local nxt = redis.call('ZRANGE', READY, 0, 0, 'WITHSCORES')
    if #nxt > 0 then out[1] = math.max(tonumber(nxt[2]) - now, 1) end
    if #nxt == 0 and redis.call('ZCARD', LEASES) == 0 then redis.call('DEL', WAKE) end
end
return out
"""
)

#: ARGV: prefix, lease (ms), then key, token pairs. Returns 1/0 per pair: still held.
RENEW = (
    _COMMON
    + """
local lease = tonumber(ARGV[2])
local now = now_ms()
local out = {}
for i = 3, #ARGV, 2 do
    if holds(ARGV[i], ARGV[i + 1]) and redis.call('ZSCORE', LEASES, ARGV[i]) then
        redis.call('ZADD', LEASES, now + lease, ARGV[i])
        out[#out + 1] = 1
    else
        out[#out + 1] = 0
    end
end
return out
"""
)

#: ARGV: prefix, key, id, token. Returns 1, or 0 when the lease is no longer held.
COMPLETE = (
    _COMMON
    + """
local lane, id, token = ARGV[2], ARGV[3], ARGV[4]
if not holds(lane, token) then return 0 end
local lk = P .. 'lane:' .. lane
if redis.call('LINDEX', lk, 0) == id then redis.call('LPOP', lk) end
redis.call('DEL', P .. 'job:' .. id)
unlease(lane, now_ms())
return 1
"""
)

#: ARGV: prefix, key, id, token, delay (ms), error, undo (1: the run does not count
#: as an attempt). The head stays; the key is ready again after the delay.
#: Returns 1, or 0 when the lease is no longer held.
RELEASE = (
    _COMMON
    + """
local lane, id, token, delay, err, undo = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]),
    ARGV[6], ARGV[7]
if not holds(lane, token) then return 0 end
local job = P .. 'job:' .. id
if redis.call('EXISTS', job) == 1 then
    if undo == '1' then
        redis.call('HINCRBY', job, 'attempts', -1)
    else
        redis.call('HSET', job, 'delay', delay, 'error', err)
        redis.call('HINCRBY', job, 'fails', 1)
    end
end
unlease(lane, now_ms() + delay)
return 1
"""
)

#: ARGV: prefix, key, id, token, reason. Moves the head job to the dead letters.
#: Returns 1, or 0 when the lease is no longer held.
DEAD_LETTER = (
    _COMMON
    + """
local lane, id, token, reason = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not holds(lane, token) then return 0 end
local now = now_ms()
local lk = P .. 'lane:' .. lane
if redis.call('LINDEX', lk, 0) == id then redis.call('LPOP', lk) end
local job = P .. 'job:' .. id
if redis.call('TYPE', job)['ok'] ~= 'hash' then redis.call('DEL', job) end
redis.call('HSET', job, 'key', lane, 'reason', reason, 'died', now)
redis.call('ZADD', DEAD, now, id)
unlease(lane, now)
return 1
"""
)

#: ARGV: prefix, id. Moves a dead job to the tail of its key's lane, with its
#: attempts reset. Returns 1, or 0 when no such dead job.
REQUEUE = (
    _COMMON
    + """
local id = ARGV[2]
if redis.call('ZREM', DEAD, id) == 0 then return 0 end
local job = P .. 'job:' .. id
local lane = redis.call('HGET', job, 'key')
redis.call('HDEL', job, 'reason', 'died', 'delay', 'error', 'fails')
redis.call('HSET', job, 'attempts', 0)
if redis.call('RPUSH', P .. 'lane:' .. lane, id) == 1 then
    redis.call('ZADD', READY, now_ms(), lane)
    wake()
end
return 1
"""
)

#: ARGV: prefix, id. Deletes a dead job. Returns 1, or 0 when no such dead job.
DISCARD = (
    _COMMON
    + """
local id = ARGV[2]
if redis.call('ZREM', DEAD, id) == 0 then return 0 end
redis.call('DEL', P .. 'job:' .. id)
return 1
"""
)
