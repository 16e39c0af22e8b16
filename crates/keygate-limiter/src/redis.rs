//! The shared limiter: every limit of a request read, decided and charged in
//! one Lua script, on Redis's clock (`TIME`), so nodes with skewed clocks agree.
//!
//! Each limit is a hash of `bucket index -> count`. The script prunes buckets
//! that left the window, sums the live ones, admits only if every limit has
//! room, then charges them all; it returns Redis's time and the live buckets,
//! from which the same core arithmetic as the memory backend derives
//! remaining counts, reset times and `Retry-After`.

use std::time::Duration;

use async_trait::async_trait;
use keygate_core::ratelimit::{decide, Counter, Decision, Rule};
use std::sync::RwLock;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::{Script, Value};

use crate::{Charge, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local charge = ARGV[2] == '1'
local allowed = true
local live = {}
local current = {}
for i, key in ipairs(KEYS) do
  local requests = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local g = math.max(math.floor(window / 60), 1)
  local span = math.ceil(window / g)
  local cur = math.floor(now / g)
  local oldest = cur - span
  local flat = redis.call('HGETALL', key)
  local buckets = {}
  local count = 0
  for j = 1, #flat, 2 do
    local index = tonumber(flat[j])
    if index < oldest then
      redis.call('HDEL', key, flat[j])
    elseif index <= cur then
      local c = tonumber(flat[j + 1])
      count = count + c
      buckets[#buckets + 1] = index
      buckets[#buckets + 1] = c
    end
  end
  live[i] = buckets
  current[i] = cur
  if count + cost > requests then allowed = false end
end
if allowed and charge then
  for i, key in ipairs(KEYS) do
    local window = tonumber(ARGV[2 + 2 * i])
    local g = math.max(math.floor(window / 60), 1)
    redis.call('HINCRBY', key, string.format('%d', current[i]), cost)
    redis.call('PEXPIRE', key, window + 2 * g)
  end
end
local out = {now, allowed and 1 or 0}
for i = 1, #KEYS do out[#out + 1] = live[i] end
return out
";

const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
";

const REFRESH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
";

/// A permit's lease in Redis: a crashed node's permits free themselves after this.
pub const PERMIT_LEASE: Duration = Duration::from_secs(30);

pub struct RedisLimiter {
    client: redis::Client,
    timeout: Duration,
    /// The shared multiplexed connection; dropped after any failure so that a
    /// hung or half-open connection is replaced rather than waited on forever.
    connection: RwLock<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    rate: Script,
    acquire: Script,
    refresh: Script,
}

fn unavailable(err: impl std::fmt::Display) -> LimiterError {
    LimiterError::Unavailable(err.to_string())
}

impl RedisLimiter {
    /// Connects lazily: a node starts even while Redis is down.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, LimiterError> {
        Ok(Self {
            client: redis::Client::open(url).map_err(unavailable)?,
            timeout,
            connection: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            rate: Script::new(RATE_SCRIPT),
            acquire: Script::new(ACQUIRE_SCRIPT),
            refresh: Script::new(REFRESH_SCRIPT),
        })
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.connection.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reset(&self) {
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn connection(&self) -> Result<MultiplexedConnection, LimiterError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// Runs one Redis operation within the timeout; any failure drops the connection.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, LimiterError>>,
    ) -> Result<T, LimiterError> {
        let result = match tokio::time::timeout(self.timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        };
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Reachability, for `/readyz` and the breaker's recovery probe.
    pub async fn ping(&self) -> Result<(), LimiterError> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            let _: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

fn int(value: &Value) -> Result<u64, LimiterError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(unavailable),
        other => Err(unavailable(format!("unexpected reply {other:?}"))),
    }
}

fn buckets(value: &Value) -> Result<Vec<(u64, u64)>, LimiterError> {
    let Value::Array(flat) = value else {
        return Err(unavailable(format!("unexpected reply {value:?}")));
    };
    flat.chunks(2)
        .map(|pair| match pair {
            [index, count] => Ok((int(index)?, int(count)?)),
            _ => Err(unavailable("odd bucket list")),
        })
        .collect()
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        _now_ms: u64,
    ) -> Result<Decision, LimiterError> {
        self.bounded(self.decide(checks, cost, charge)).await
    }

    async fn acquire(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError> {
        self.bounded(self.take_permit(key, max)).await
    }

    fn health(&self) -> LimiterHealth {
        LimiterHealth {
            backend: "redis",
            state: "up",
            detail: None,
        }
    }
}

impl RedisLimiter {
    async fn decide(&self, checks: &[LimitCheck], cost: u64, charge: Charge) -> Result<Decision, LimiterError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.rate.prepare_invoke();
        invocation.arg(cost).arg(u8::from(charge == Charge::Consume));
        for check in checks {
            invocation
                .key(check.key.redis_key())
                .arg(check.rule.requests)
                .arg(check.rule.window_ms);
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut connection).await.map_err(unavailable)?;
        let (now_ms, allowed) = match reply.as_slice() {
            [now, allowed, ..] => (int(now)?, int(allowed)? == 1),
            _ => return Err(unavailable("short reply")),
        };
        let mut counters: Vec<(Rule, Counter)> = checks
            .iter()
            .zip(reply.iter().skip(2))
            .map(|(check, live)| Ok((check.rule, Counter::from_buckets(&check.rule, buckets(live)?))))
            .collect::<Result<_, LimiterError>>()?;
        if counters.len() != checks.len() {
            return Err(unavailable("reply has fewer limits than asked"));
        }
        // Replay the script's decision locally to derive the details; it
        // reaches the same verdict from the same counts.
        let mut limits: Vec<(Rule, &mut Counter)> = counters.iter_mut().map(|(rule, c)| (*rule, c)).collect();
        let decision = decide(&mut limits, now_ms, cost, allowed && charge == Charge::Consume);
        Ok(Decision { allowed, ..decision })
    }

    async fn take_permit(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError> {
        let mut connection = self.connection().await?;
        let member = format!("{:032x}", rand::random::<u128>());
        let lease_ms = PERMIT_LEASE.as_millis() as u64;
        let redis_key = key.redis_key();
        let taken: i64 = self
            .acquire
            .key(&redis_key)
            .arg(max)
            .arg(lease_ms)
            .arg(&member)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if taken != 1 {
            return Ok(None);
        }
        let refresh = self.refresh.clone();
        let (key_for_refresh, member_for_refresh) = (redis_key.clone(), member.clone());
        let mut refresh_connection = connection.clone();
        let renewer = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(PERMIT_LEASE / 3);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let renewed: Result<i64, _> = refresh
                    .key(&key_for_refresh)
                    .arg(lease_ms)
                    .arg(&member_for_refresh)
                    .invoke_async(&mut refresh_connection)
                    .await;
                if let Err(err) = renewed {
                    tracing::warn!(error = %err, "permit lease renewal failed");
                }
            }
        });
        Ok(Some(Permit::new(move || {
            renewer.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let released: Result<i64, _> = redis::cmd("ZREM")
                        .arg(&redis_key)
                        .arg(&member)
                        .query_async(&mut connection)
                        .await;
                    if let Err(err) = released {
                        tracing::warn!(error = %err, "permit release failed; its lease will expire");
                    }
                });
            }
        })))
    }
}
