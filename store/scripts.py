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

# KEYS: live, backup, progress of the new version   ARGV: expected live ('' = none), new version
PROMOTE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1, ''} end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
if cur ~= '' and cur ~= ARGV[2] then
  redis.call('SET', KEYS[2], cur)
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, cur}
"""

# KEYS: live, backup, progress of the backup version   ARGV: expected backup
ROLLBACK = """
local backup = redis.call('GET', KEYS[2]) or ''
if backup == '' or backup ~= ARGV[1] then return {0, backup} end
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1, backup} end
local cur = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], backup)
redis.call('DEL', KEYS[2])
return {1, cur}
"""

# KEYS: live   ARGV: version base, entity ids...
# Returns the live version followed by one value (or false) per entity.
READ_LIVE = """
local v = redis.call('GET', KEYS[1])
if not v then return {false} end
local base = ARGV[1] .. v .. ':e:'
local keys = {}
for i = 2, #ARGV do keys[i - 1] = base .. ARGV[i] end
local out = redis.call('MGET', unpack(keys))
table.insert(out, 1, v)
return out
"""

# KEYS: live u2i, live i2i, live popular, user epoch, global epoch, session, trending set
# ARGV: u2i base, i2i base, popular base, user, segment, cache prefix, trending count
# One round trip for a recommendation: versions, epochs, the cached answer if any; otherwise the
# user's candidates, session, the segment's popular list and the trending top items.
RECOMMEND = """
local vu = redis.call('GET', KEYS[1]) or ''
local vi = redis.call('GET', KEYS[2]) or ''
local vp = redis.call('GET', KEYS[3]) or ''
local eu = redis.call('GET', KEYS[4]) or '0'
local eg = redis.call('GET', KEYS[5]) or '0'
local ck = ARGV[6] .. ':' .. eu .. ':' .. eg .. ':' .. vu .. ':' .. vi .. ':' .. vp
local cached = redis.call('GET', ck)
if cached then return {1, ck, vu, vi, vp, cached} end
local cands = false
if vu ~= '' then cands = redis.call('GET', ARGV[1] .. vu .. ':e:' .. ARGV[4]) end
local pop = false
if vp ~= '' then
  pop = redis.call('GET', ARGV[3] .. vp .. ':e:' .. ARGV[5])
  if not pop and ARGV[5] ~= 'global' then pop = redis.call('GET', ARGV[3] .. vp .. ':e:global') end
end
local sess = redis.call('GET', KEYS[6])
local trend = redis.call('ZREVRANGE', KEYS[7], 0, tonumber(ARGV[7]) - 1, 'WITHSCORES')
return {0, ck, vu, vi, vp, cands, sess, pop, trend}
"""
