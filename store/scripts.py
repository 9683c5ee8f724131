"""The Lua scripts that make version writes, cutover and reads atomic."""

from __future__ import annotations

# KEYS: progress hash, entity keys...
# ARGV: offset field, expected offset, ttl_s, new offset, state field, state json, values...
# Applies the batch only if the partition's stored offset is the expected one (compare-and-set),
# so a batch applied twice (crash before the Kafka commit, or a zombie after a rebalance) is not.
APPLY_BATCH = """
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '-1'
if cur ~= ARGV[2] then return {0, cur} end
local ttl = tonumber(ARGV[3])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 5], 'EX', ttl)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], ARGV[5], ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
return {1, cur}
"""

# KEYS: live, backup, progress of the new version, registry
# ARGV: expected live ('' = none), new version, then registry field/record pairs
# The pointer flip and the registry records of every version it changes, in one atomic step.
PROMOTE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1, ''} end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
if cur ~= '' and cur ~= ARGV[2] then
  redis.call('SET', KEYS[2], cur)
end
redis.call('SET', KEYS[1], ARGV[2])
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

# KEYS: live u2i, live i2i, live popular, user epoch, global epoch, cached answer, session,
#       trending set, u2i entity (of the expected u2i version), popular entity of the segment and
#       the global popular entity (of the expected popular version)
# ARGV: expected u2i version, expected popular version ('' = none), whether the segment is not
#       global ('1'/'0'), trending count
# One round trip for a recommendation. The cached answer is stored behind a tag made of the epochs
# and versions it was computed with, so an event or a cutover makes it unreachable at once. The
# caller names the entity keys of the versions it expects to be live; when another version is
# live, nothing is read and the versions are returned, so the caller retries with their keys and
# an answer never mixes two versions.
RECOMMEND = """
local vu = redis.call('GET', KEYS[1]) or ''
local vi = redis.call('GET', KEYS[2]) or ''
local vp = redis.call('GET', KEYS[3]) or ''
local eu = redis.call('GET', KEYS[4]) or '0'
local eg = redis.call('GET', KEYS[5]) or '0'
local tag = eu .. ':' .. eg .. ':' .. vu .. ':' .. vi .. ':' .. vp .. '|'
local cached = redis.call('GET', KEYS[6])
if cached and string.sub(cached, 1, #tag) == tag then
  return {1, tag, vu, vi, vp, string.sub(cached, #tag + 1)}
end
if vu ~= ARGV[1] or vp ~= ARGV[2] then return {2, tag, vu, vi, vp} end
local cands = false
if vu ~= '' then cands = redis.call('GET', KEYS[9]) end
local pop = false
if vp ~= '' then
  pop = redis.call('GET', KEYS[10])
  if not pop and ARGV[3] == '1' then pop = redis.call('GET', KEYS[11]) end
end
local sess = redis.call('GET', KEYS[7])
local trend = redis.call('ZREVRANGE', KEYS[8], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
return {0, tag, vu, vi, vp, cands, sess, pop, trend}
"""
