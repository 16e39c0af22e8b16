//! The shared limiter: every limit of a request read, decided and charged in
//! one Lua script, on Redis's clock (`TIME`), so nodes with skewed clocks agree.
//!
//! Most requests of a busy key make no call at all: the node admits them
//! from a block of the key's allowance that Redis granted it (a lease,
//! lease.rs, `limiter.lease_max`). The rest are coalesced (coalesce.rs):
//! while one script call is in flight, the requests that arrive wait, and
//! the next call decides all of them, one after the other inside the script,
//! each still all-or-nothing. A node then makes one round trip per batch
//! instead of one per request, and limits stay exact, since the script is
//! atomic and decides in arrival order.
//!
//! On a Redis Cluster (`redis+cluster://host1:6379,host2:6379,...`) every
//! counter of one decision is in one hash slot (a braced tag in its name,
//! `LimitCheck::slot_tag`), so a script still decides a request atomically;
//! a batch is split into one call per tag, made at once.
//!
//! Each limit is a hash of `bucket index -> count`. The script prunes buckets
//! that left the window, sums the live ones, admits only if every limit has
//! room, then charges them all; it returns Redis's time and the live buckets,
//! from which the same core arithmetic as the memory backend derives
//! remaining counts, reset times and `Retry-After`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keygate_core::ratelimit::{decide, Bucket, Counter, Decision, Rule};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::AsyncConnectionConfig;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::coalesce::{Coalescer, Request, Turn, Waiting};
use crate::lease::{Grant, Leases, Reservation, Return, Target, SWEEP_EVERY};
use crate::{Charge, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

/// Each limit is a hash of `bucket index -> "count:newest"` (the newest
/// request's time, ms; a bare count, from before it was kept, is read as the
/// bucket's last millisecond). A bucket counts while its newest request is in
/// the window (crates/keygate-core/src/ratelimit.rs).
///
/// Gives back what ended leases have left, then decides a batch of
/// requests in order. ARGV: the number of returns and each one's (bucket,
/// amount); the number of requests, then per request its cost, whether to
/// charge (0 no, 1 if every enforced limit has room, 2 whatever room), the
/// block it asks for (`want`, at least its cost; see lease.rs), the bucket
/// to charge (`ahead`: 0 the current one, 1 the next, for a block reserved
/// ahead, whose cost is 0) and its number of limits, then each limit's
/// (requests, window ms, flags, origin ms, refill). Flags: 1 for a shadow
/// limit (never refuses, charged only when it would admit), 2 for a balance
/// (credits: one bucket per period of `window` from `origin`; `requests` in
/// the first period, `refill` in every later one; never leased). KEYS: each
/// return's key, then every limit's key, in the same order. Returns
/// Redis's time, then per request 1 or 0, what it was granted (its cost, or
/// a block of at most 1/16 of the room left, never more than `want`), and
/// each limit's live buckets (index, count, newest) as they were before the
/// request was charged. A block beyond the request's cost is stamped with the
/// bucket's last millisecond: requests admitted from it come later than now.
/// Every bucket still in the window counts, a next bucket's block included.
const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parse(value)
  local sep = string.find(value, ':', 1, true)
  if sep then
    return tonumber(string.sub(value, 1, sep - 1)), tonumber(string.sub(value, sep + 1))
  end
  return tonumber(value), nil
end
local out = {now}
local a = 2
local k = 0
for r = 1, tonumber(ARGV[1]) do
  k = k + 1
  local value = redis.call('HGET', KEYS[k], ARGV[a])
  if value then
    local c, newest = parse(value)
    c = c - tonumber(ARGV[a + 1])
    if c <= 0 then
      redis.call('HDEL', KEYS[k], ARGV[a])
    elseif newest then
      redis.call('HSET', KEYS[k], ARGV[a], string.format('%d:%d', c, newest))
    else
      redis.call('HSET', KEYS[k], ARGV[a], string.format('%d', c))
    end
  end
  a = a + 2
end
local requests_in_batch = tonumber(ARGV[a])
a = a + 1
for r = 1, requests_in_batch do
  local cost = tonumber(ARGV[a])
  local charge = ARGV[a + 1] ~= '0'
  local force = ARGV[a + 1] == '2'
  local want = tonumber(ARGV[a + 2])
  local ahead = tonumber(ARGV[a + 3])
  local m = tonumber(ARGV[a + 4])
  a = a + 5
  local room = nil
  local fits = {}
  local shadow = {}
  local has_shadow = false
  local has_balance = false
  local ttls = {}
  local live = {}
  local current = {}
  local held = {}
  local keys = {}
  local windows = {}
  for i = 1, m do
    k = k + 1
    local key = KEYS[k]
    local requests = tonumber(ARGV[a])
    local window = tonumber(ARGV[a + 1])
    local flags = tonumber(ARGV[a + 2])
    local origin = tonumber(ARGV[a + 3])
    local refill = tonumber(ARGV[a + 4])
    shadow[i] = flags % 2 == 1
    local balance = flags >= 2
    a = a + 5
    local g = math.max(math.floor(window / 60), 1)
    if balance then
      g = window
      has_balance = true
    end
    local cur = math.floor(math.max(now - origin, 0) / g)
    local target = cur + ahead
    local function leaves(newest)
      if balance then return (math.floor(math.max(newest - origin, 0) / g) + 1) * g + origin end
      return newest + window
    end
    if balance then
      if cur > 0 then requests = refill end
      ttls[i] = leaves(now) - now + 60000
    else
      ttls[i] = window + 3 * g
    end
    local flat = redis.call('HGETALL', key)
    local buckets = {}
    local count = 0
    held[i] = {0, 0}
    for j = 1, #flat, 2 do
      local index = tonumber(flat[j])
      local c, newest = parse(flat[j + 1])
      if newest == nil then newest = (index + 1) * g - 1 end
      if leaves(newest) <= now then
        redis.call('HDEL', key, flat[j])
      else
        count = count + c
        buckets[#buckets + 1] = index
        buckets[#buckets + 1] = c
        buckets[#buckets + 1] = newest
        if index == target then held[i] = {c, newest} end
      end
    end
    live[i] = buckets
    current[i] = target
    keys[i] = key
    windows[i] = window
    local left = requests - count
    fits[i] = left >= cost
    if shadow[i] then
      has_shadow = true
    elseif room == nil or left < room then
      room = left
    end
  end
  local allowed = force or room == nil or room >= cost
  local grant = cost
  if allowed and charge and not force and room ~= nil and want > cost and not has_shadow and not has_balance then
    grant = math.max(cost, math.min(want, math.floor(room / 16)))
  end
  if allowed and charge and grant > 0 then
    for i = 1, m do
      if fits[i] or force then
        local newest = now
        if grant > cost then newest = (current[i] + 1) * math.max(math.floor(windows[i] / 60), 1) - 1 end
        newest = math.max(newest, held[i][2])
        redis.call('HSET', keys[i], string.format('%d', current[i]),
          string.format('%d:%d', held[i][1] + grant, newest))
        if ttls[i] < 1e15 then
          redis.call('PEXPIRE', keys[i], math.floor(ttls[i]))
        else
          redis.call('PERSIST', keys[i])
        end
      end
    end
  end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = (allowed and charge) and grant or 0
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

/// The URL scheme of a Redis Cluster: `redis+cluster://host1:6379,host2:6379`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where the counters live: one Redis server, or a Redis Cluster.
#[derive(Clone)]
enum Backend {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl Backend {
    fn open(url: &str, timeout: Duration) -> Result<Self, LimiterError> {
        let Some(nodes) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Self::Single(redis::Client::open(url).map_err(unavailable)?));
        };
        let nodes: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(|node| format!("redis://{node}"))
            .collect();
        if nodes.is_empty() {
            return Err(unavailable("redis+cluster:// names no node"));
        }
        let client = ClusterClient::builder(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // A master that is down fails its slots' calls at once, for
            // `on_failure` to answer, rather than after many retries.
            .retries(1)
            .build()
            .map_err(unavailable)?;
        Ok(Self::Cluster(client))
    }

    async fn connect(&self, timeout: Duration) -> Result<Connection, LimiterError> {
        match self {
            Self::Single(client) => client
                .get_multiplexed_async_connection_with_config(&bounded_by(timeout))
                .await
                .map(Connection::Single),
            Self::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| Connection::Cluster(Box::new(c))),
        }
        .map_err(unavailable)
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A connection to either backend; Redis Cluster routes each call by its first key.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The hash tag in a counter's name (`kg:rl:{tag}:...`).
fn tag_of(redis_key: &str) -> &str {
    redis_key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(redis_key, |(tag, _)| tag)
}

pub struct RedisLimiter {
    backend: Backend,
    coalescer: Arc<Coalescer>,
    script: RateScript,
    timeout: Duration,
    /// The shared multiplexed connection; dropped after any failure so that a
    /// hung or half-open connection is replaced rather than waited on forever.
    connection: RwLock<Option<Connection>>,
    connecting: tokio::sync::Mutex<()>,
    /// `None` with `limiter.lease_max = 0`: every request decided in Redis.
    leases: Option<Arc<Leases>>,
    /// Whether the keeper task (gives back ended blocks' leftovers,
    /// reserves blocks ahead) runs.
    keeping: AtomicBool,
    acquire: Script,
    refresh: Script,
}

/// A connection whose connecting and every answer are bounded by `timeout`.
fn bounded_by(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
}

fn unavailable(err: impl std::fmt::Display) -> LimiterError {
    LimiterError::Unavailable(err.to_string())
}

impl RedisLimiter {
    /// Connects lazily: a node starts even while Redis is down. `url` is
    /// `redis://host:port` or, for a Redis Cluster, `redis+cluster://host1:port,host2:port,...`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, LimiterError> {
        let backend = Backend::open(url, timeout)?;
        Ok(Self {
            script: RateScript {
                script: Script::new(RATE_SCRIPT),
                cluster: backend.is_cluster(),
                calls: Arc::default(),
            },
            backend,
            timeout,
            connection: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            coalescer: Arc::default(),
            leases: None,
            keeping: AtomicBool::new(false),
            acquire: Script::new(ACQUIRE_SCRIPT),
            refresh: Script::new(REFRESH_SCRIPT),
        })
    }

    /// Admits from leases of at most `max` requests a key (`limiter.lease_max`);
    /// 0 turns leases off.
    pub fn with_leases(mut self, max: u64) -> Self {
        self.leases = (max > 1).then(|| Arc::new(Leases::new(max)));
        self
    }

    fn current(&self) -> Option<Connection> {
        self.connection.read().clone()
    }

    fn reset(&self) {
        *self.connection.write() = None;
    }

    async fn connection(&self) -> Result<Connection, LimiterError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let connection = self.backend.connect(self.timeout).await?;
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
        self.script.calls.load(Ordering::Relaxed)
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

/// The returns' keys and (bucket, amount) pairs, ahead of the requests.
fn add_returns(invocation: &mut redis::ScriptInvocation<'_>, returns: &[Return]) {
    invocation.arg(returns.len());
    for given_back in returns {
        invocation
            .key(&given_back.key)
            .arg(given_back.bucket)
            .arg(given_back.amount);
    }
}

/// The rate-limit script, as every call of this limiter makes it.
#[derive(Clone)]
struct RateScript {
    script: Script,
    cluster: bool,
    /// Calls made that decided requests: fewer than the requests decided
    /// when they were coalesced or admitted from leases.
    calls: Arc<AtomicU64>,
}

impl RateScript {
    /// Gives back `returns`, then decides `requests` in order. On a Redis
    /// Cluster, one call per hash tag (of the requests and the returns),
    /// made at once.
    async fn call(
        &self,
        connection: &Connection,
        returns: Vec<Return>,
        requests: &[Request<'_>],
    ) -> Result<Vec<(Decision, u64)>, LimiterError> {
        if !self.cluster {
            return self.call_one(connection.clone(), &returns, requests).await;
        }
        let mut tags: Vec<&str> = requests.iter().map(|request| request_tag(request)).collect();
        tags.extend(returns.iter().map(|given_back| tag_of(&given_back.key)));
        let mut seen = std::collections::HashSet::new();
        tags.retain(|tag| seen.insert(*tag));
        let calls = tags.iter().map(|tag| {
            let batch: Vec<Request<'_>> = requests.iter().filter(|r| request_tag(r) == *tag).copied().collect();
            let given_back: Vec<Return> = returns.iter().filter(|r| tag_of(&r.key) == *tag).cloned().collect();
            let connection = connection.clone();
            async move { self.call_one(connection, &given_back, &batch).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut by_tag: Vec<(&str, std::vec::IntoIter<(Decision, u64)>)> = Vec::with_capacity(tags.len());
        for (tag, answer) in tags.iter().zip(answers) {
            by_tag.push((tag, answer?.into_iter()));
        }
        requests
            .iter()
            .map(|request| {
                let tag = request_tag(request);
                by_tag
                    .iter_mut()
                    .find(|(t, _)| *t == tag)
                    .and_then(|(_, answers)| answers.next())
                    .ok_or_else(|| unavailable("a request was left undecided"))
            })
            .collect()
    }

    /// One script call: gives back `returns`, then decides `requests` in order.
    async fn call_one(
        &self,
        mut connection: Connection,
        returns: &[Return],
        requests: &[Request<'_>],
    ) -> Result<Vec<(Decision, u64)>, LimiterError> {
        if !requests.is_empty() {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        let mut invocation = self.script.prepare_invoke();
        add_returns(&mut invocation, returns);
        invocation.arg(requests.len());
        for request in requests {
            invocation
                .arg(request.cost)
                .arg(match request.charge {
                    Charge::DryRun => 0u8,
                    Charge::Consume => 1,
                    Charge::Force => 2,
                })
                .arg(request.want.max(request.cost))
                .arg(request.target.offset())
                .arg(request.checks.len());
            for check in request.checks {
                invocation
                    .key(check.redis_key())
                    .arg(check.rule.requests)
                    .arg(check.rule.window_ms)
                    .arg(u8::from(check.rule.shadow) | (u8::from(check.rule.is_balance()) << 1))
                    .arg(check.rule.balance_terms().map_or(0, |(origin, _)| origin))
                    .arg(check.rule.balance_terms().map_or(0, |(_, refill)| refill));
            }
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut connection).await.map_err(unavailable)?;
        let (now, mut rest) = match reply.split_first() {
            Some((now, rest)) => (int(now)?, rest),
            None => return Err(unavailable("empty reply")),
        };
        let mut decisions = Vec::with_capacity(requests.len());
        for request in requests {
            let (allowed, grant, live) = match rest {
                [allowed, grant, after @ ..] if after.len() >= request.checks.len() => {
                    (int(allowed)? == 1, int(grant)?, after)
                }
                _ => return Err(unavailable("reply has fewer limits than asked")),
            };
            let (buckets_of, after) = live.split_at(request.checks.len());
            decisions.push((decision_of(*request, now, allowed, buckets_of)?, grant));
            rest = after;
        }
        Ok(decisions)
    }
}

/// The hash tag of a request's counters (all of them share it).
fn request_tag<'a>(request: &Request<'a>) -> &'a str {
    request.checks.first().map_or("", LimitCheck::slot_tag)
}

/// At most this many reservations, and as many returns, in one keeper call:
/// a call of 128 runs in Redis for well under a millisecond.
const KEEPER_BATCH: usize = 128;

/// Runs while this node holds leases, on a connection of its own: reserves
/// the blocks ahead that [`Leases::take`] queued, as soon as they are
/// queued, and gives back, every [`SWEEP_EVERY`], what blocks whose bucket
/// has ended have left. A return that fails is dropped: its allowance comes
/// back when its bucket leaves the window. A reservation that fails is
/// dropped too: the key's next block is then asked for on the request path.
struct Keeper {
    leases: Weak<Leases>,
    wake: Arc<tokio::sync::Notify>,
    backend: Backend,
    timeout: Duration,
    connection: Option<Connection>,
    script: RateScript,
}

impl Keeper {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(SWEEP_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let swept = tokio::select! {
                _ = ticker.tick() => true,
                () = self.wake.notified() => false,
            };
            let Some(leases) = self.leases.upgrade() else {
                return;
            };
            if swept {
                leases.sweep(Instant::now());
            }
            let reservations = leases.drain_reservations();
            let mut returns = leases.drain_returns();
            // In calls of a bounded size: Redis runs one script at a time,
            // and the request path's calls wait behind each.
            let mut reservations = reservations.chunks(KEEPER_BATCH);
            while !returns.is_empty() || reservations.len() > 0 {
                let these = returns.split_off(returns.len().saturating_sub(KEEPER_BATCH));
                self.keep(&leases, these, reservations.next().unwrap_or_default()).await;
            }
        }
    }

    /// One call (one per hash tag on a cluster) for all of them.
    async fn keep(&mut self, leases: &Leases, returns: Vec<Return>, reservations: &[Reservation]) {
        let requests: Vec<Request<'_>> = reservations
            .iter()
            .map(|reservation| Request {
                checks: &reservation.checks,
                cost: 0,
                charge: Charge::Consume,
                want: reservation.want,
                target: Target::Next,
            })
            .collect();
        let sent = Instant::now();
        let decided = match tokio::time::timeout(self.timeout, self.call(returns, &requests)).await {
            Ok(decided) => decided,
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        };
        match decided {
            Ok(decided) => {
                for (reservation, (decision, grant)) in reservations.iter().zip(&decided) {
                    let grant = if decision.allowed { *grant } else { 0 };
                    leases.reserved(&reservation.checks, grant, decision, sent);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "keeping leases: a call failed");
                self.connection = None;
                for reservation in reservations {
                    leases.not_granted(&reservation.checks);
                }
            }
        }
    }

    async fn call(
        &mut self,
        returns: Vec<Return>,
        requests: &[Request<'_>],
    ) -> Result<Vec<(Decision, u64)>, LimiterError> {
        if self.connection.is_none() {
            self.connection = Some(self.backend.connect(self.timeout).await?);
        }
        let Some(connection) = self.connection.as_ref() else {
            return Err(unavailable("no connection"));
        };
        self.script.call(connection, returns, requests).await
    }
}

fn int(value: &Value) -> Result<u64, LimiterError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(unavailable),
        other => Err(unavailable(format!("unexpected reply {other:?}"))),
    }
}

fn buckets(value: &Value) -> Result<Vec<Bucket>, LimiterError> {
    let Value::Array(flat) = value else {
        return Err(unavailable(format!("unexpected reply {value:?}")));
    };
    flat.chunks(3)
        .map(|triple| match triple {
            [index, count, newest] => Ok(Bucket {
                index: int(index)?,
                count: int(count)?,
                newest_ms: int(newest)?,
            }),
            _ => Err(unavailable("bucket list not in threes")),
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
        .map(|(check, live)| {
            Ok((
                *check.rule,
                Counter::from_buckets_at(&check.rule, buckets(live)?, now_ms),
            ))
        })
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
        now_ms: u64,
    ) -> Result<Decision, LimiterError> {
        if let Some(decision) = self.check_now(checks, cost, charge, now_ms) {
            return Ok(decision);
        }
        let want = match (&self.leases, charge) {
            (Some(leases), Charge::Consume) => leases.ask(checks, cost, Instant::now()),
            _ => cost,
        };
        self.bounded(self.decide(Request {
            checks,
            cost,
            charge,
            want,
            target: Target::Current,
        }))
        .await
    }

    /// A request admitted from this node's lease on its key: no round trip.
    fn check_now(&self, checks: &[LimitCheck], cost: u64, charge: Charge, _now_ms: u64) -> Option<Decision> {
        match charge {
            Charge::Consume => self.leases.as_ref()?.take(checks, cost, Instant::now()),
            Charge::DryRun | Charge::Force => None,
        }
    }

    async fn acquire(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError> {
        self.bounded(self.take_permit(key, max)).await
    }

    fn keeps_counts(&self) -> bool {
        true
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
    /// This request's decision: made in the next call, by this request or
    /// by one queued ahead of it.
    async fn decide(&self, request: Request<'_>) -> Result<Decision, LimiterError> {
        let mut lead = match Coalescer::join(&self.coalescer, request) {
            Ok(lead) => lead,
            Err(heard) => match heard.await {
                Ok(Turn::Decided(decided)) => return decided,
                Ok(Turn::Lead(lead)) => lead,
                Err(_) => return Err(unavailable("the call carrying this decision was dropped")),
            },
        };
        // `lead` hands the next call over when it goes out of scope, even if
        // this request is dropped half-way (its client left, or a timeout).
        let others = lead.take_others();
        let mut requests = Vec::with_capacity(others.len() + 1);
        requests.push(request);
        requests.extend(others.iter().map(Waiting::request));
        match self.decide_batch(&requests).await {
            Ok(mut decisions) => {
                for (waiting, decision) in others.into_iter().zip(decisions.drain(1..)) {
                    waiting.answer(Ok(decision));
                }
                decisions.pop().ok_or_else(|| unavailable("empty reply"))
            }
            Err(err) => {
                for waiting in others {
                    waiting.answer(Err(err.clone()));
                }
                Err(err)
            }
        }
    }

    /// One script call deciding `requests` in order, giving back what ended
    /// leases have left first; each admitted request's block is recorded.
    async fn decide_batch(&self, requests: &[Request<'_>]) -> Result<Vec<Decision>, LimiterError> {
        // Before the call: a block's end is counted from here, never later
        // than Redis's clock reads it.
        let sent = Instant::now();
        let decided = self.call_script(requests).await;
        if let Some(leases) = &self.leases {
            self.record_grants(leases, requests, decided.as_ref().ok(), sent);
        }
        decided.map(|decided| decided.into_iter().map(|(decision, _)| decision).collect())
    }

    /// The script call itself: each request's decision and what it was
    /// granted, after giving back what ended leases have left. On a Redis
    /// Cluster, one call per hash tag, made at once, each giving back the
    /// leftovers of its own tag; the keeper gives back the others.
    async fn call_script(&self, requests: &[Request<'_>]) -> Result<Vec<(Decision, u64)>, LimiterError> {
        let connection = self.connection().await?;
        let mut returns = self.leases.as_ref().map(|l| l.drain_returns()).unwrap_or_default();
        if let Some(leases) = self.leases.as_ref().filter(|_| self.backend.is_cluster()) {
            let (mine, others): (Vec<Return>, Vec<Return>) = returns
                .into_iter()
                .partition(|r| requests.iter().any(|request| request_tag(request) == tag_of(&r.key)));
            if !others.is_empty() {
                leases.give_back_later(others);
            }
            returns = mine;
        }
        self.script.call(&connection, returns, requests).await
    }

    /// Hands each admitted request's block to the leases, and frees the
    /// claim of each request that asked for one and got none.
    fn record_grants(
        &self,
        leases: &Arc<Leases>,
        requests: &[Request<'_>],
        decided: Option<&Vec<(Decision, u64)>>,
        sent: Instant,
    ) {
        for (i, request) in requests.iter().enumerate() {
            match decided.and_then(|decided| decided.get(i)) {
                Some((decision, grant)) if decision.allowed && request.charge == Charge::Consume => {
                    leases.granted(
                        request.checks,
                        Grant {
                            cost: request.cost,
                            asked: request.want > request.cost,
                            grant: *grant,
                            decision,
                            sent,
                        },
                    );
                    if *grant > request.cost {
                        self.start_keeper(leases);
                    }
                }
                _ if request.want > request.cost => leases.not_granted(request.checks),
                _ => {}
            }
        }
    }

    /// Starts the keeper task (gives back ended blocks' leftovers, reserves
    /// blocks ahead), once: it ends when the limiter is dropped.
    fn start_keeper(&self, leases: &Arc<Leases>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.keeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let keeper = Keeper {
            leases: Arc::downgrade(leases),
            wake: leases.waker(),
            backend: self.backend.clone(),
            timeout: self.timeout,
            connection: None,
            script: self.script.clone(),
        };
        runtime.spawn(keeper.run());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ArcStr, CounterKey};

    fn check(owner: &str) -> LimitCheck {
        LimitCheck::new(CounterKey::new(owner, "default", 60_000), Rule::new(10, 60_000))
    }

    #[test]
    fn a_counter_is_named_in_its_hash_slot_and_the_tag_is_read_back() {
        let own = check("key_1");
        assert_eq!(own.redis_key(), "kg:rl:{key_1}:key_1:default:60000");
        let shared = check("key_1").in_slot_of(ArcStr::from("ws_1"));
        assert_eq!(shared.redis_key(), "kg:rl:{ws_1}:key_1:default:60000");
        assert_eq!(tag_of(&shared.redis_key()), "ws_1");
        assert_eq!(tag_of("no-tag"), "no-tag");
    }

    #[test]
    fn a_cluster_url_names_its_nodes() {
        let timeout = Duration::from_secs(1);
        assert!(Backend::open("redis+cluster://10.0.0.1:6379,10.0.0.2:6379", timeout)
            .unwrap()
            .is_cluster());
        assert!(!Backend::open("redis://127.0.0.1:6379", timeout).unwrap().is_cluster());
        assert!(Backend::open("redis+cluster://", timeout).is_err());
        assert!(Backend::open("redis+cluster:// , ", timeout).is_err());
    }
}
