"""The Lua scripts that make version writes, cutover and reads atomic."""

from __future__ import annotations

# KEYS: progress hash   ARGV: offset field, expected offset, new offset, state field, state json
# Advances a partition's progress only if its stored offset is the expected one (compare-and-set):
# a batch applied twice (a crash before the Kafka commit, a zombie after a rebalance) is counted
# once. The batch's values are written before it (the same bytes each time, so rewriting them
# is harmless), which lets them spread over a cluster's slots.
ADVANCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '-1'
if cur ~= ARGV[2] then return {0, cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5])
return {1, cur}
"""

# KEYS: live, backup, progress of the new version, registry, canary pointer
# ARGV: expected live ('' = none), new version, then registry field/record pairs
# The pointer flip and the registry records of every version it changes, in one atomic step. A
# version that was the store's canary stops being one as it goes live.
PROMOTE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1, ''} end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
if cur ~= '' and cur ~= ARGV[2] then
  redis.call('SET', KEYS[2], cur)
end
redis.call('SET', KEYS[1], ARGV[2])
local canary = redis.call('GET', KEYS[5])
if canary and string.match(canary, '^[^|]*') == ARGV[2] then redis.call('DEL', KEYS[5]) end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
return {1, cur}
"""

# KEYS: live, backup, progress of the backup version, registry
# ARGV: expected backup, expected live, then registry field/record pairs
ROLLBACK = """
local backup = redis.call('GET', KEYS[2]) or ''
if backup == '' or backup ~= ARGV[1] then return {0, backup} end
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1, backup} end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[2] then return {0, cur} end
redis.call('SET', KEYS[1], backup)
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
return {1, cur}
"""

# KEYS: live, backup, progress of the version, registry
# ARGV: version, its registry record as the caller read it, its retired record
# Claims a version for retirement only if it is neither live nor backup and its record is still
# the one the caller decided on (not promoted, re-ingested or changed meanwhile). Deleting the
# progress first makes a racing promotion of it fail ("not materialized") instead of going live
# on data being deleted.
RETIRE = """
local v = ARGV[1]
if (redis.call('GET', KEYS[1]) or '') == v or (redis.call('GET', KEYS[2]) or '') == v then
  return 0
end
if redis.call('HGET', KEYS[4], v) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[4], v, ARGV[3])
return 1
"""

# KEYS: the user's epoch, cached answer, session, u2i candidates (of the expected u2i version),
#       the items the user hid (one slot: the user's)
# ARGV: the rest of the expected tag (global epoch and versions), whether a u2i version is live
# What a recommendation needs of its user, in one step. The cached answer is stored behind a tag
# of the epochs and versions it was computed with, so an event (the user's epoch) or a cutover
# (the global epoch, the versions) makes it unreachable at once.
USER_READ = """
local eu = redis.call('GET', KEYS[1]) or '0'
local tag = eu .. ':' .. ARGV[1] .. '|'
local cached = redis.call('GET', KEYS[2])
if cached and string.sub(cached, 1, #tag) == tag then
  return {1, tag, string.sub(cached, #tag + 1)}
end
local cands = false
if ARGV[2] == '1' then cands = redis.call('GET', KEYS[4]) end
return {0, tag, redis.call('GET', KEYS[3]), cands, redis.call('SMEMBERS', KEYS[5])}
"""

# KEYS: canary pointer, live pointer, progress of the version, registry, experiment counters
# ARGV: version, canary pointer value, the version's record as the caller read it, its new record
# Starts (or re-shares) a canary: only a materialized version that is not live, while no other
# version is the store's canary, and whose record did not change since the caller checked it.
# A new experiment starts its counters from zero.
CANARY_START = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then return -2 end
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^[^|]*') ~= ARGV[1] then return -3 end
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
if not cur then redis.call('DEL', KEYS[5]) end
return 1
"""

# KEYS: canary pointer, registry   ARGV: version, its new record
# Ends a canary (aborted) if it still is ``version``, and records why, in one step.
CANARY_END = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.match(cur, '^[^|]*') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the live pointers of u2i, i2i and popular, their canary pointers, the global epoch (one
#       slot: the prefix's)
# The pointers and epoch a read starts from, in one command instead of four GETs (cluster
# pipelines refuse MGET); a missing key reads as ''.
POINTERS = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('GET', KEYS[i]) or '' end
return out
"""

# KEYS: session, epoch of each user (all in one slot: a cluster call holds one slot's users)
# ARGV[1], ARGV[2]: their TTLs; then each user's session. Each session and its epoch bump
# together: a cached answer becomes unreachable exactly when the new session becomes readable.
# Many users per command: a command per user cost the worker ~27 µs of packing and parsing per
# event, Redis ~13.
WRITE_SESSIONS = """
local ttl, epoch_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  redis.call('SET', KEYS[2 * i - 1], ARGV[i + 2], 'EX', ttl)
  redis.call('INCR', KEYS[2 * i])
  redis.call('EXPIRE', KEYS[2 * i], epoch_ttl)
end
return #KEYS / 2
"""
