//! The shared limiter: every limit of a request read, decided and charged in
//! one Lua script, on Redis's clock (`TIME`), so nodes with skewed clocks agree.
//!
//! Decisions are coalesced ([`Coalescer`]): while one script call is in
//! flight, the requests that arrive wait, and the next call decides all of
//! them, one after the other inside the script, each still all-or-nothing. A
//! node then makes one round trip per batch instead of one per request, and
//! limits stay exact, since the script is atomic and decides in arrival order.
//!
//! Each limit is a hash of `bucket index -> count`. The script prunes buckets
//! that left the window, sums the live ones, admits only if every limit has
//! room, then charges them all; it returns Redis's time and the live buckets,
//! from which the same core arithmetic as the memory backend derives
//! remaining counts, reset times and `Retry-After`.

use std::time::Duration;

use async_trait::async_trait;
use keygate_core::ratelimit::{decide, Counter, Decision, Rule};
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::{Script, Value};

use crate::{Charge, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

/// Decides a batch of requests in order. ARGV: the number of requests, then
/// per request its cost, whether to charge, its number of limits and each
/// limit's (requests, window ms); KEYS: every limit's key, in the same order.
/// Returns Redis's time, then per request 1 or 0 and each limit's live
/// buckets as they were before the request was charged.
const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local k = 0
local a = 2
for r = 1, tonumber(ARGV[1]) do
  local cost = tonumber(ARGV[a])
  local charge = ARGV[a + 1] == '1'
  local m = tonumber(ARGV[a + 2])
  a = a + 3
  local allowed = true
  local live = {}
  local current = {}
  local keys = {}
  local windows = {}
  for i = 1, m do
    k = k + 1
    local key = KEYS[k]
    local requests = tonumber(ARGV[a])
    local window = tonumber(ARGV[a + 1])
    a = a + 2
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
    keys[i] = key
    windows[i] = window
    if count + cost > requests then allowed = false end
  end
  if allowed and charge then
    for i = 1, m do
      local g = math.max(math.floor(windows[i] / 60), 1)
      redis.call('HINCRBY', keys[i], string.format('%d', current[i]), cost)
      redis.call('PEXPIRE', keys[i], windows[i] + 2 * g)
    end
  end
  out[#out + 1] = allowed and 1 or 0
  for i = 1, m do out[#out + 1] = live[i] end
end
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
    coalescer: Coalescer,
    /// Script calls made for rate limits: fewer than the requests decided
    /// when they were coalesced.
    calls: AtomicU64,
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
            coalescer: Coalescer::default(),
            calls: AtomicU64::new(0),
            rate: Script::new(RATE_SCRIPT),
            acquire: Script::new(ACQUIRE_SCRIPT),
            refresh: Script::new(REFRESH_SCRIPT),
        })
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.connection.read().clone()
    }

    fn reset(&self) {
        *self.connection.write() = None;
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
        *self.connection.write() = Some(connection.clone());
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

    /// Rate-limit script calls made so far (each decides one or more requests).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
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

/// One request's decision from the script's verdict and the live buckets of
/// its limits: the core arithmetic is replayed locally to derive remaining
/// counts, resets and `Retry-After`; it reaches the same verdict.
fn decision_of(request: Request<'_>, now_ms: u64, allowed: bool, live: &[Value]) -> Result<Decision, LimiterError> {
    let mut counters: Vec<(Rule, Counter)> = request
        .checks
        .iter()
        .zip(live)
        .map(|(check, live)| Ok((check.rule, Counter::from_buckets(&check.rule, buckets(live)?))))
        .collect::<Result<_, LimiterError>>()?;
    let mut limits: Vec<(Rule, &mut Counter)> = counters.iter_mut().map(|(rule, c)| (*rule, c)).collect();
    let decision = decide(
        &mut limits,
        now_ms,
        request.cost,
        allowed && request.charge == Charge::Consume,
    );
    Ok(Decision { allowed, ..decision })
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
        self.bounded(self.decide(Request { checks, cost, charge })).await
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

/// One request's limits, as [`Limiter::check`] was given them.
#[derive(Clone, Copy)]
struct Request<'a> {
    checks: &'a [LimitCheck],
    cost: u64,
    charge: Charge,
}

/// A request that waits for the call in flight, and how it hears back.
struct Waiting {
    checks: Vec<LimitCheck>,
    cost: u64,
    charge: Charge,
    turn: oneshot::Sender<Turn>,
}

impl Waiting {
    fn request(&self) -> Request<'_> {
        Request {
            checks: &self.checks,
            cost: self.cost,
            charge: self.charge,
        }
    }
}

/// What a waiting request hears: its decision, or that it makes the next
/// call, for itself and for the requests that queued behind it.
enum Turn {
    Decided(Result<Decision, LimiterError>),
    Lead(Vec<Waiting>),
}

/// Requests per script call, so one call stays short.
const MAX_BATCH: usize = 128;

/// At most one script call in flight per node; the requests that arrive
/// meanwhile queue here. No task of its own: the request that finds no call
/// in flight makes it, and hands the next one to the first request queued
/// behind it ([`Coalescer::hand_over`]), so each call is made by a request
/// that waits for it anyway.
#[derive(Default)]
struct Coalescer {
    state: Mutex<CoalescerState>,
}

#[derive(Default)]
struct CoalescerState {
    calling: bool,
    waiting: Vec<Waiting>,
}

impl Coalescer {
    fn state(&self) -> MutexGuard<'_, CoalescerState> {
        self.state.lock()
    }

    /// `None`: no call is in flight, and the caller makes the next one.
    /// Otherwise the receiver of the caller's turn.
    fn join(&self, request: Request<'_>) -> Option<oneshot::Receiver<Turn>> {
        let mut state = self.state();
        if !state.calling {
            state.calling = true;
            return None;
        }
        let (turn, heard) = oneshot::channel();
        state.waiting.push(Waiting {
            checks: request.checks.to_vec(),
            cost: request.cost,
            charge: request.charge,
            turn,
        });
        Some(heard)
    }

    /// After a call: the first request still waiting makes the next call,
    /// with up to `MAX_BATCH - 1` of those behind it; with none waiting,
    /// the next request to arrive does.
    fn hand_over(&self) {
        let mut state = self.state();
        while !state.waiting.is_empty() {
            let take = state.waiting.len().min(MAX_BATCH);
            let mut batch: Vec<Waiting> = state.waiting.drain(..take).collect();
            let leader = batch.remove(0);
            match leader.turn.send(Turn::Lead(batch)) {
                Ok(()) => return,
                // That request went away (its client, or its timeout): the
                // next one leads, and the rest wait as they were.
                Err(Turn::Lead(rest)) => {
                    let queued = std::mem::take(&mut state.waiting);
                    state.waiting = rest;
                    state.waiting.extend(queued);
                }
                Err(Turn::Decided(_)) => {}
            }
        }
        state.calling = false;
    }
}

/// Hands the next call over when the call that holds it ends, even if the
/// request making it is dropped half-way (its client left, or a timeout).
struct Leading<'a>(&'a Coalescer);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.hand_over();
    }
}

impl RedisLimiter {
    /// This request's decision: made in the next call, by this request or
    /// by one queued ahead of it.
    async fn decide(&self, request: Request<'_>) -> Result<Decision, LimiterError> {
        let others = match self.coalescer.join(request) {
            None => Vec::new(),
            Some(heard) => match heard.await {
                Ok(Turn::Decided(decided)) => return decided,
                Ok(Turn::Lead(others)) => others,
                Err(_) => return Err(unavailable("the call carrying this decision was dropped")),
            },
        };
        let _leading = Leading(&self.coalescer);
        let mut requests = Vec::with_capacity(others.len() + 1);
        requests.push(request);
        requests.extend(others.iter().map(Waiting::request));
        match self.decide_batch(&requests).await {
            Ok(mut decisions) => {
                for (waiting, decision) in others.into_iter().zip(decisions.drain(1..)) {
                    let _ = waiting.turn.send(Turn::Decided(Ok(decision)));
                }
                decisions.pop().ok_or_else(|| unavailable("empty reply"))
            }
            Err(err) => {
                for waiting in others {
                    let _ = waiting.turn.send(Turn::Decided(Err(err.clone())));
                }
                Err(err)
            }
        }
    }

    /// One script call deciding `requests` in order.
    async fn decide_batch(&self, requests: &[Request<'_>]) -> Result<Vec<Decision>, LimiterError> {
        let mut connection = self.connection().await?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.rate.prepare_invoke();
        invocation.arg(requests.len());
        for request in requests {
            invocation
                .arg(request.cost)
                .arg(u8::from(request.charge == Charge::Consume))
                .arg(request.checks.len());
            for check in request.checks {
                invocation
                    .key(check.key.redis_key())
                    .arg(check.rule.requests)
                    .arg(check.rule.window_ms);
            }
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut connection).await.map_err(unavailable)?;
        let (now, mut rest) = match reply.split_first() {
            Some((now, rest)) => (int(now)?, rest),
            None => return Err(unavailable("empty reply")),
        };
        let mut decisions = Vec::with_capacity(requests.len());
        for request in requests {
            let (allowed, live) = match rest.split_first() {
                Some((allowed, after)) if after.len() >= request.checks.len() => (int(allowed)? == 1, after),
                _ => return Err(unavailable("reply has fewer limits than asked")),
            };
            let (buckets_of, after) = live.split_at(request.checks.len());
            decisions.push(decision_of(*request, now, allowed, buckets_of)?);
            rest = after;
        }
        Ok(decisions)
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
