//! [`RedisState`]: the [`FleetState`] of a fleet sharing one Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use backstop_core::{
    BudgetWindow, CircuitListener, Claim, FleetState, OnStoreFailure, RATE_WINDOW, RateCorrection,
    RateVerdict, SharedAccount, SharedCircuit, SharedCounts, SharedRate, StoreFailure,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::keys::{self, Keys};
use crate::settings::{RedisSettings, SettingsError};

/// Publications waiting for the writer; past this many (a store that has
/// been slow for a while) new ones are dropped, never waited for.
const QUEUE: usize = 1024;
/// Longest wait to open a connection (a connect is slower than a command).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time between two heartbeats that tell whether the store answers.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Time between two refreshes of the windows of counts the fleet sums.
const REFRESH: Duration = Duration::from_millis(100);
/// Longest pause before the subscription tries to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Stores a circuit state and announces it, in one atomic step. Timed
/// states (open, cooling down) only lengthen: a shorter one than the key's
/// is dropped, an open break outranks a cooldown, and a disabled model
/// stays disabled until a close. Returns 1 when it stored and published.
///
/// KEYS[1] the circuit key; ARGV: channel, state, ttl ms, value, message.
const PUBLISH_CIRCUIT: &str = r"
local key, state, ttl = KEYS[1], ARGV[2], tonumber(ARGV[3])
if state == 'closed' then
  redis.call('DEL', key)
elseif state == 'disabled' then
  redis.call('SET', key, ARGV[4])
else
  local current = redis.call('GET', key)
  if current then
    local kind = string.match(current, '^[a-z_]+')
    if kind == 'disabled' then return 0 end
    if kind == 'open' and state == 'cooling_down' then return 0 end
    if kind == state and redis.call('PTTL', key) >= ttl then return 0 end
  end
  redis.call('SET', key, ARGV[4], 'PX', ttl)
end
redis.call('PUBLISH', ARGV[1], ARGV[5])
return 1
";

/// Takes or renews a model's probe lease. Returns 1 when this replica holds it.
///
/// KEYS[1] the lease key; ARGV: replica id, ttl ms.
const PROBE_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Holds an amount on every account of a budget, all or none. Returns 0
/// when held, or the 1-based index of the first account whose cap refused.
///
/// KEYS: the accounts' keys in the window; ARGV: amount, ttl ms, then each
/// account's cap.
const RESERVE_BUDGET: &str = r"
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  if used + amount > tonumber(ARGV[i + 2]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, amount)
  redis.call('PEXPIRE', key, ARGV[2])
end
return 0
";

/// Replaces what a reservation held by what the call cost, never below 0.
///
/// KEYS: the accounts' keys in the current window; ARGV: actual - held, ttl ms.
const SETTLE_BUDGET: &str = r"
for _, key in ipairs(KEYS) do
  if redis.call('INCRBY', key, ARGV[1]) < 0 then redis.call('SET', key, 0) end
  redis.call('PEXPIRE', key, ARGV[2])
end
return 0
";

/// Adds a replica's pending counts to the fleet's window and reads back
/// the fleet's sums over it, dropping buckets that left it. Returns
/// `{sum of counter 0, sum of counter 1}`.
///
/// KEYS[1] the window's hash; ARGV: oldest bucket in the window, ttl ms,
/// then `bucket, count0, count1` per pending bucket.
const ADD_COUNTS: &str = r"
local key, oldest = KEYS[1], tonumber(ARGV[1])
local i = 3
while ARGV[i] do
  if tonumber(ARGV[i]) >= oldest then
    redis.call('HINCRBY', key, ARGV[i] .. ':0', ARGV[i + 1])
    redis.call('HINCRBY', key, ARGV[i] .. ':1', ARGV[i + 2])
  end
  i = i + 3
end
local all = redis.call('HGETALL', key)
local sums, stale = {0, 0}, {}
for j = 1, #all, 2 do
  local bucket, counter = string.match(all[j], '^(%d+):(%d)$')
  if (not bucket) or tonumber(bucket) < oldest then
    table.insert(stale, all[j])
  else
    local c = tonumber(counter) + 1
    sums[c] = sums[c] + tonumber(all[j + 1])
  end
end
if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
if #all > #stale * 2 then redis.call('PEXPIRE', key, ARGV[2]) end
return sums
";

/// Takes a claim unless another replica holds it. Returns -1 when this
/// replica got it, else the holder's remaining milliseconds.
///
/// KEYS[1] the claim key; ARGV: replica id, ttl ms.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
return math.max(redis.call('PTTL', KEYS[1]), 0)
";

/// Counts one call on every rate limit, all or none, on the store's clock,
/// in slots of `slot ms` over a sliding minute (`span` slots plus the one
/// the minute partly overlaps, counted in full, so the count never
/// underestimates). Returns `{0, slot, 0}` when counted, else
/// `{i, 0 | 1, wait ms}`: limit `i` (1-based) refused for requests (0) or
/// tokens (1), and fits after `wait`.
///
/// KEYS: one hash per limit (fields `r<slot>`, `t<slot>`); ARGV: tokens,
/// slot ms, span, then `rpm, tpm, check` per limit (0: no limit; check 1
/// counts and checks a request, 0 only adds the tokens).
const ACQUIRE_RATE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tokens, slot_ms, span = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slot = math.floor(now / slot_ms)
local oldest = slot - span
local never = (span + 1) * slot_ms
local function wait(counts, excess)
  table.sort(counts, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, c in ipairs(counts) do
    freed = freed + c[2]
    if freed >= excess then return math.max((c[1] + span + 1) * slot_ms - now, 1) end
  end
  return never
end
for i, key in ipairs(KEYS) do
  local base = 3 + (i - 1) * 3
  local rpm, tpm = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local all = redis.call('HGETALL', key)
  local requests, used, rs, ts, stale = 0, 0, {}, {}, {}
  for j = 1, #all, 2 do
    local kind, n = string.match(all[j], '^([rt])(%d+)$')
    n = tonumber(n)
    if (not n) or n < oldest then
      table.insert(stale, all[j])
    else
      local v = tonumber(all[j + 1])
      if kind == 'r' then
        requests = requests + v
        table.insert(rs, {n, v})
      else
        used = used + v
        table.insert(ts, {n, v})
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if ARGV[base + 3] == '1' then
    if rpm > 0 and requests + 1 > rpm then return {i, 0, wait(rs, requests + 1 - rpm)} end
    if tpm > 0 and used + tokens > tpm then
      if tokens > tpm then return {i, 1, never} end
      return {i, 1, wait(ts, used + tokens - tpm)}
    end
  end
end
for i, key in ipairs(KEYS) do
  if ARGV[3 + (i - 1) * 3 + 3] == '1' then redis.call('HINCRBY', key, 'r' .. slot, 1) end
  if tokens > 0 then redis.call('HINCRBY', key, 't' .. slot, tokens) end
  redis.call('PEXPIRE', key, never + slot_ms)
end
return {0, slot, 0}
";

/// Corrects what one slot counted, if the slot is still kept, never below 0.
///
/// KEYS: the limits' hashes; ARGV: the slot, then `requests, tokens` to
/// add per limit.
const SETTLE_RATE: &str = r"
for i, key in ipairs(KEYS) do
  for k, kind in ipairs({'r', 't'}) do
    local delta = tonumber(ARGV[1 + (i - 1) * 2 + k])
    local field = kind .. ARGV[1]
    if delta ~= 0 and redis.call('HEXISTS', key, field) == 1 then
      if redis.call('HINCRBY', key, field, delta) < 0 then redis.call('HSET', key, field, 0) end
    end
  end
end
return 0
";

/// What the writer writes, in order.
enum Write {
    Circuit(String, SharedCircuit),
    Claim {
        name: String,
        ttl_ms: u64,
        then: Box<dyn FnOnce(Claim) + Send>,
    },
    Counts(Arc<SharedCounts>),
    Settle {
        keys: Vec<String>,
        delta: i64,
        ttl_ms: u64,
    },
    RateSettle {
        keys: Vec<String>,
        /// The slot, then `requests, tokens` per key.
        args: Vec<i64>,
    },
}

/// The store could not be used. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A setting is wrong.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The store refused the credentials.
    #[error("the Redis at ${env} refused the credentials of the URL (authentication failed)")]
    Auth {
        /// The variable holding the URL.
        env: String,
    },
    /// The store did not answer.
    #[error("the Redis at ${env} did not answer: {cause}")]
    Unreachable {
        /// The variable holding the URL.
        env: String,
        /// What happened, without the URL.
        cause: String,
    },
}

/// What went wrong with a store call, in words that hold no URL.
fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_dropped() {
        "connection dropped".into()
    } else if let Some(code) = e.code() {
        format!("server error {code}")
    } else {
        format!("{:?} error", e.kind())
    }
}

fn is_auth(e: &RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Runs `fut` under `limit`; a timeout is a failure described as one.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

/// Pings the store once: what `backstop check --connect` does. Returns
/// how long the answer took.
pub async fn ping(settings: &RedisSettings) -> Result<Duration, FleetError> {
    let client = settings.client()?;
    let started = Instant::now();
    let unreachable = |cause: String| FleetError::Unreachable {
        env: settings.url_env.clone(),
        cause,
    };
    let mut conn = match tokio::time::timeout(
        CONNECT_TIMEOUT.max(settings.timeout),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if is_auth(&e) => {
            return Err(FleetError::Auth {
                env: settings.url_env.clone(),
            });
        }
        Ok(Err(e)) => return Err(unreachable(describe(&e))),
        Err(_) => return Err(unreachable("no connection within 1 s".into())),
    };
    match bounded(
        CONNECT_TIMEOUT.max(settings.timeout),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(_) => Ok(started.elapsed()),
        Err(cause) => Err(unreachable(cause)),
    }
}

/// The fleet state of one replica, on Redis. Build it with
/// [`RedisState::new`] when the config is loaded (strategies subscribe to
/// it as they are built), then [`RedisState::start`] it on the runtime.
pub struct RedisState {
    settings: RedisSettings,
    client: redis::Client,
    keys: Keys,
    /// Tells this replica's messages from the others'.
    replica: u64,
    /// Every model id, read back when reconciling.
    models: Vec<String>,
    /// The last command answered; the subscription is live.
    commands_up: AtomicBool,
    subscribed: AtomicBool,
    /// The state last logged and exported.
    reported_up: AtomicBool,
    conn: OnceLock<ConnectionManager>,
    queue: mpsc::Sender<Write>,
    queued: Mutex<Option<mpsc::Receiver<Write>>>,
    listeners: Mutex<Vec<Weak<dyn CircuitListener>>>,
    /// Windows of counts the fleet sums, held weakly: a window lives as
    /// long as the alert sink that counts into it.
    counts: Mutex<Vec<Weak<SharedCounts>>>,
    publish_script: Script,
    lease_script: Script,
    reserve_script: Script,
    settle_script: Script,
    counts_script: Script,
    claim_script: Script,
    rate_script: Script,
    rate_settle_script: Script,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("settings", &self.settings)
            .field("replica", &format_args!("{:016x}", self.replica))
            .field("store_up", &self.store_up())
            .finish_non_exhaustive()
    }
}

/// The running tasks of a started [`RedisState`]; dropping it stops them.
#[derive(Debug)]
pub struct FleetHandle {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FleetHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisState {
    /// The state of a replica routing to `models` (their config ids). Does
    /// no I/O; the URL is checked.
    pub fn new(settings: RedisSettings, models: Vec<String>) -> Result<Arc<Self>, FleetError> {
        let client = settings.client()?;
        let (queue, queued) = mpsc::channel(QUEUE);
        Ok(Arc::new(Self {
            keys: Keys::new(&settings.key_prefix),
            settings,
            client,
            replica: rand::random::<u64>(),
            models,
            commands_up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            reported_up: AtomicBool::new(false),
            conn: OnceLock::new(),
            queue,
            queued: Mutex::new(Some(queued)),
            listeners: Mutex::new(Vec::new()),
            counts: Mutex::new(Vec::new()),
            publish_script: Script::new(PUBLISH_CIRCUIT),
            lease_script: Script::new(PROBE_LEASE),
            reserve_script: Script::new(RESERVE_BUDGET),
            settle_script: Script::new(SETTLE_BUDGET),
            counts_script: Script::new(ADD_COUNTS),
            claim_script: Script::new(CLAIM),
            rate_script: Script::new(ACQUIRE_RATE),
            rate_settle_script: Script::new(SETTLE_RATE),
        }))
    }

    /// Connects and starts the background tasks (writer, subscription,
    /// heartbeat). Credentials the store refuses are an error; a store that
    /// does not answer is not: the replica starts on its own state, and the
    /// tasks keep trying.
    pub async fn start(self: &Arc<Self>) -> Result<FleetHandle, FleetError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(self.client.clone(), config).map_err(|e| {
                FleetError::Unreachable {
                    env: self.settings.url_env.clone(),
                    cause: describe(&e),
                }
            })?;
        let mut first = conn.clone();
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut first),
        )
        .await
        {
            Ok(Ok(_)) => self.commands_up.store(true, Ordering::Release),
            Ok(Err(e)) if is_auth(&e) => {
                return Err(FleetError::Auth {
                    env: self.settings.url_env.clone(),
                });
            }
            Ok(Err(e)) => tracing::warn!(
                url_env = %self.settings.url_env,
                cause = %describe(&e),
                "state store unreachable at start; this replica carries on with its own state"
            ),
            Err(_) => tracing::warn!(
                url_env = %self.settings.url_env,
                "state store did not answer at start; this replica carries on with its own state"
            ),
        }
        // A second start would find the queue taken; the connection is set once.
        let _ = self.conn.set(conn);
        let queued = self
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut tasks = Vec::new();
        if let Some(queued) = queued {
            tasks.push(tokio::spawn(Arc::clone(self).write(queued)));
        }
        tasks.push(tokio::spawn(Arc::clone(self).subscribe()));
        tasks.push(tokio::spawn(Arc::clone(self).heartbeat()));
        tasks.push(tokio::spawn(Arc::clone(self).refresh_counts()));
        Ok(FleetHandle { tasks })
    }

    /// The settings (the URL stays inside).
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    fn conn(&self) -> Option<ConnectionManager> {
        self.conn.get().cloned()
    }

    /// Notes whether commands answer, logging a change of the store's state once.
    fn commands(&self, up: bool, cause: Option<&str>) {
        self.commands_up.store(up, Ordering::Release);
        self.report(cause);
    }

    fn subscription(&self, up: bool, cause: Option<&str>) {
        self.subscribed.store(up, Ordering::Release);
        self.report(cause);
    }

    fn report(&self, cause: Option<&str>) {
        let up = self.store_up();
        if self.reported_up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(url_env = %self.settings.url_env, "state store answers; fleet state is shared");
            } else {
                tracing::warn!(
                    url_env = %self.settings.url_env,
                    cause = cause.unwrap_or("unknown"),
                    "state store failed; this replica carries on with its own state"
                );
            }
        }
    }

    /// Writes queued publications and settlements, one script run each.
    async fn write(self: Arc<Self>, mut queued: mpsc::Receiver<Write>) {
        let channel = self.keys.channel();
        while let Some(write) = queued.recv().await {
            let Some(mut conn) = self.conn() else {
                if let Write::Claim { then, .. } = write {
                    then(Claim::Unknown);
                }
                continue;
            };
            let write = match write {
                Write::Claim { name, ttl_ms, then } => {
                    let claim = self.run_claim(&mut conn, &name, ttl_ms).await;
                    then(claim);
                    continue;
                }
                Write::Counts(counts) => {
                    self.refresh(&counts).await;
                    continue;
                }
                other => other,
            };
            let invocation = match &write {
                Write::Circuit(model, circuit) => {
                    let mut invocation = self.publish_script.key(self.keys.circuit(model));
                    invocation
                        .arg(&channel)
                        .arg(circuit.state.as_str())
                        .arg(keys::ttl_ms(circuit))
                        .arg(keys::circuit_value(circuit))
                        .arg(keys::message(self.replica, model, circuit));
                    invocation
                }
                Write::Settle {
                    keys,
                    delta,
                    ttl_ms,
                } => {
                    let mut invocation = self.settle_script.prepare_invoke();
                    for key in keys {
                        invocation.key(key);
                    }
                    invocation.arg(*delta).arg(*ttl_ms);
                    invocation
                }
                Write::RateSettle { keys, args } => {
                    let mut invocation = self.rate_settle_script.prepare_invoke();
                    for key in keys {
                        invocation.key(key);
                    }
                    for arg in args {
                        invocation.arg(*arg);
                    }
                    invocation
                }
                Write::Claim { .. } | Write::Counts(_) => continue,
            };
            match bounded(
                self.settings.timeout,
                invocation.invoke_async::<i64>(&mut conn),
            )
            .await
            {
                Ok(_) => self.commands(true, None),
                Err(cause) => {
                    tracing::debug!(%cause, "fleet write lost");
                    self.commands(false, Some(&cause));
                }
            }
        }
    }

    /// Runs one claim: who of the fleet acts.
    async fn run_claim(&self, conn: &mut ConnectionManager, name: &str, ttl_ms: u64) -> Claim {
        let mut invocation = self.claim_script.key(self.keys.claim(name));
        invocation
            .arg(format!("{:016x}", self.replica))
            .arg(ttl_ms.max(1));
        match bounded(self.settings.timeout, invocation.invoke_async::<i64>(conn)).await {
            Ok(-1) => {
                self.commands(true, None);
                Claim::Won
            }
            Ok(remaining) => {
                self.commands(true, None);
                Claim::Lost {
                    remaining: Duration::from_millis(remaining.unsigned_abs()),
                }
            }
            Err(cause) => {
                tracing::debug!(name, %cause, "claim unknown; acting alone");
                self.commands(false, Some(&cause));
                Claim::Unknown
            }
        }
    }

    /// Every [`REFRESH`], writes each shared window's pending counts and
    /// reads back the fleet's sums; a store that fails leaves the counts
    /// pending (within the window) and the sums unknown.
    async fn refresh_counts(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(REFRESH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Held weakly: the window of an alert sink a reload replaced
            // is dropped with it, not refreshed for ever.
            let windows: Vec<Arc<SharedCounts>> = {
                let mut held = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
                held.retain(|w| w.strong_count() > 0);
                held.iter().filter_map(Weak::upgrade).collect()
            };
            for window in windows {
                self.refresh(&window).await;
            }
        }
    }

    async fn refresh(&self, window: &SharedCounts) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let now = window.bucket_of(unix_ms);
        let pending = window.take_pending();
        let conn = self
            .conn()
            .filter(|_| self.commands_up.load(Ordering::Acquire));
        let Some(mut conn) = conn else {
            // Known down: keep the counts for when it answers again.
            window.restore_pending(pending, now);
            window.set_fleet(now, None);
            return;
        };
        let mut invocation = self.counts_script.key(self.keys.counts(window.name()));
        invocation
            .arg(window.oldest(now))
            .arg(window.bucket_ms().saturating_mul(window.buckets() + 1));
        for (bucket, counts) in &pending {
            invocation.arg(*bucket).arg(counts[0]).arg(counts[1]);
        }
        match bounded(
            self.settings.timeout,
            invocation.invoke_async::<(u64, u64)>(&mut conn),
        )
        .await
        {
            Ok((first, second)) => {
                self.commands(true, None);
                window.set_fleet(now, Some([first, second]));
            }
            Err(cause) => {
                // The script may have run before the answer was lost:
                // sending these counts again could count them twice, so
                // the fleet goes without them (this replica's own window
                // still has them).
                tracing::debug!(window = window.name(), %cause, "fleet counts not refreshed");
                self.commands(false, Some(&cause));
                window.set_fleet(now, None);
            }
        }
    }

    /// Listens for other replicas' transitions; on every (re)connect it
    /// resubscribes and reconciles first.
    async fn subscribe(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let cause = match self.listen(&mut backoff).await {
                Ok(()) => "subscription ended".to_owned(),
                Err(cause) => cause,
            };
            self.subscription(false, Some(&cause));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn listen(&self, backoff: &mut Duration) -> Result<(), String> {
        let mut pubsub = bounded(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await?;
        bounded(CONNECT_TIMEOUT, pubsub.subscribe(self.keys.channel())).await?;
        // Subscribed first, then read: a transition published in between is
        // heard, not missed.
        self.reconcile().await?;
        self.subscription(true, None);
        *backoff = Duration::from_millis(50);
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            match keys::parse_message(&text) {
                Some((replica, _, _)) if replica == self.replica => {}
                Some((_, model, circuit)) => self.adopt(model, circuit),
                None => tracing::debug!(%text, "unreadable circuit message ignored"),
            }
        }
        Ok(())
    }

    /// Reads every model's circuit key and adopts what is there.
    async fn reconcile(&self) -> Result<(), String> {
        let Some(mut conn) = self.conn() else {
            return Ok(());
        };
        for model in &self.models {
            let key = self.keys.circuit(model);
            let (value, pttl): (Option<String>, i64) = bounded(
                self.settings.timeout.max(CONNECT_TIMEOUT),
                redis::pipe().get(&key).pttl(&key).query_async(&mut conn),
            )
            .await?;
            if let Some(circuit) = value.and_then(|v| keys::parse_value(&v, pttl)) {
                self.adopt(model, circuit);
            }
        }
        self.commands(true, None);
        Ok(())
    }

    /// Hands a transition to every listener still alive.
    fn adopt(&self, model: &str, circuit: SharedCircuit) {
        let listeners: Vec<Arc<dyn CircuitListener>> = {
            let mut held = self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            held.retain(|w| w.strong_count() > 0);
            held.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in listeners {
            listener.adopt(model, circuit);
        }
    }

    /// Pings the store now and then, so the exported state follows a store
    /// that stops answering (or answers again) while nothing is published.
    async fn heartbeat(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(mut conn) = self.conn() else {
                continue;
            };
            match bounded(
                self.settings.timeout.max(Duration::from_millis(100)),
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await
            {
                Ok(_) => self.commands(true, None),
                Err(cause) => self.commands(false, Some(&cause)),
            }
        }
    }
}

impl FleetState for RedisState {
    fn backend(&self) -> &str {
        "redis"
    }

    fn publish_circuit(&self, model: &str, circuit: SharedCircuit) {
        if self
            .queue
            .try_send(Write::Circuit(model.to_owned(), circuit))
            .is_err()
        {
            tracing::debug!(model, "circuit publication dropped: the store is behind");
        }
    }

    fn subscribe_circuits(&self, listener: Weak<dyn CircuitListener>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    fn probe_lease(&self, model: &str, ttl: Duration) -> BoxFuture<'_, bool> {
        let key = self.keys.probe(model);
        let model = model.to_owned();
        Box::pin(async move {
            let Some(mut conn) = self.conn() else {
                return true;
            };
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut invocation = self.lease_script.key(key);
            invocation.arg(format!("{:016x}", self.replica)).arg(ttl_ms);
            match bounded(
                self.settings.timeout,
                invocation.invoke_async::<i64>(&mut conn),
            )
            .await
            {
                Ok(held) => {
                    self.commands(true, None);
                    held == 1
                }
                Err(cause) => {
                    // Probing twice beats never probing.
                    tracing::debug!(model, %cause, "probe lease unknown; probing anyway");
                    self.commands(false, Some(&cause));
                    true
                }
            }
        })
    }

    fn store_up(&self) -> bool {
        self.commands_up.load(Ordering::Acquire) && self.subscribed.load(Ordering::Acquire)
    }

    fn shares_budgets(&self) -> bool {
        true
    }

    fn reserve_budget<'a>(
        &'a self,
        window: BudgetWindow<'a>,
        accounts: &'a [SharedAccount<'a>],
        amount: u64,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreFailure>> {
        Box::pin(async move {
            let Some(mut conn) = self.conn() else {
                return Err(StoreFailure("not started".into()));
            };
            let mut invocation = self.reserve_script.prepare_invoke();
            for account in accounts {
                invocation.key(self.keys.budget(window.scope, account.name, window.number));
            }
            invocation
                .arg(amount)
                .arg(window.length_ms.saturating_mul(2).max(1));
            for account in accounts {
                invocation.arg(account.cap);
            }
            match bounded(
                self.settings.timeout,
                invocation.invoke_async::<i64>(&mut conn),
            )
            .await
            {
                Ok(refused) => {
                    self.commands(true, None);
                    Ok(usize::try_from(refused).ok().and_then(|i| i.checked_sub(1)))
                }
                Err(cause) => {
                    self.commands(false, Some(&cause));
                    Err(StoreFailure(cause))
                }
            }
        })
    }

    fn settle_budget(&self, window: BudgetWindow<'_>, accounts: &[&str], held: u64, actual: u64) {
        let delta = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(held).unwrap_or(i64::MAX));
        if delta == 0 {
            return;
        }
        let write = Write::Settle {
            keys: accounts
                .iter()
                .map(|a| self.keys.budget(window.scope, a, window.number))
                .collect(),
            delta,
            ttl_ms: window.length_ms.saturating_mul(2).max(1),
        };
        if self.queue.try_send(write).is_err() {
            tracing::debug!("budget settlement dropped: the store is behind");
        }
    }

    fn on_store_failure(&self) -> OnStoreFailure {
        self.settings.on_store_failure
    }

    fn shares_rate_limits(&self) -> bool {
        true
    }

    fn acquire_rate<'a>(
        &'a self,
        limits: &'a [SharedRate<'a>],
        tokens: u64,
        bucket_ms: u64,
    ) -> BoxFuture<'a, Result<RateVerdict, StoreFailure>> {
        Box::pin(async move {
            let Some(mut conn) = self.conn() else {
                return Err(StoreFailure("not started".into()));
            };
            let slot_ms = bucket_ms.max(1);
            let span = (RATE_WINDOW.as_millis() as u64 / slot_ms).max(1);
            let mut invocation = self.rate_script.prepare_invoke();
            for limit in limits {
                invocation.key(self.keys.rate(limit.name));
            }
            invocation.arg(tokens).arg(slot_ms).arg(span);
            for limit in limits {
                invocation
                    .arg(limit.rpm)
                    .arg(limit.tpm)
                    .arg(u8::from(limit.check));
            }
            match bounded(
                self.settings.timeout,
                invocation.invoke_async::<(i64, i64, i64)>(&mut conn),
            )
            .await
            {
                Ok((0, slot, _)) => {
                    self.commands(true, None);
                    Ok(RateVerdict::Held {
                        ticket: u64::try_from(slot).unwrap_or(0),
                    })
                }
                Ok((refused, kind, wait_ms)) => {
                    self.commands(true, None);
                    Ok(RateVerdict::Refused {
                        index: usize::try_from(refused - 1).unwrap_or(0),
                        tokens: kind == 1,
                        retry_after: Duration::from_millis(wait_ms.unsigned_abs()),
                    })
                }
                Err(cause) => {
                    self.commands(false, Some(&cause));
                    Err(StoreFailure(cause))
                }
            }
        })
    }

    fn settle_rate(&self, ticket: u64, corrections: &[RateCorrection<'_>]) {
        let mut args = Vec::with_capacity(1 + corrections.len() * 2);
        args.push(i64::try_from(ticket).unwrap_or(i64::MAX));
        for c in corrections {
            args.push(c.requests);
            args.push(c.tokens);
        }
        let write = Write::RateSettle {
            keys: corrections.iter().map(|c| self.keys.rate(c.name)).collect(),
            args,
        };
        if self.queue.try_send(write).is_err() {
            tracing::debug!("rate-limit settlement dropped: the store is behind");
        }
    }

    fn shares_counts(&self) -> bool {
        true
    }

    fn share_counts(&self, counts: Arc<SharedCounts>) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&counts));
    }

    fn flush_counts(&self, counts: &Arc<SharedCounts>) {
        if counts.queue_flush()
            && self
                .queue
                .try_send(Write::Counts(Arc::clone(counts)))
                .is_err()
        {
            // The next refresh takes them.
            counts.unqueue_flush();
        }
    }

    fn claim(&self, name: &str, ttl: Duration, then: Box<dyn FnOnce(Claim) + Send>) {
        let write = Write::Claim {
            name: name.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            then,
        };
        if let Err(refused) = self.queue.try_send(write) {
            tracing::debug!(name, "claim not queued: the store is behind; acting alone");
            if let Write::Claim { then, .. } = refused.into_inner() {
                then(Claim::Unknown);
            }
        }
    }
}
