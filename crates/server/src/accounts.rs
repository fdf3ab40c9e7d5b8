//! The server's side of the accounts store: who is calling, what an image costs them, the
//! per-minute rate limit, and holds on credits that are charged when the image is ready and
//! released otherwise. All state lives in the [`Store`], so replicas on one PostgreSQL share
//! keys, balances and limits, and a revoked key is refused by the next request anywhere.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::keys;
use crate::limit::{Budget, Clock};
use crate::store::{self, Balance, Hold, Key, MILLI, RateTake, Store, StoreError, UsageRow};

/// Free calls a sandbox key has per calendar month (PhotoRoom's sandbox: 1,000).
pub const SANDBOX_MONTHLY_CALLS: i64 = 1000;
/// Free calls a sandbox key has per UTC day (PhotoRoom's sandbox: 100).
pub const SANDBOX_DAILY_CALLS: i64 = 100;

/// Why a request's credits could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key's balance (a sandbox key: its month's free calls) does not cover it.
    Credits,
    /// A sandbox key has used its calls for the UTC day; they come back at `resets_at`
    /// (Unix seconds).
    SandboxDay { resets_at: i64 },
}

pub struct Accounts {
    store: Arc<dyn Store>,
    /// The monthly allowance of keys created without their own.
    default_monthly: i64,
    /// Units per minute for keys without their own; 0 for none.
    default_rate_limit: u32,
    /// This process, as its reservations name it.
    replica: String,
    lease: Duration,
    clock: Clock,
    /// Reservations this replica holds now: the ones whose lease it renews.
    held: Arc<Mutex<HashSet<i64>>>,
    sandbox_daily_calls: i64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("store", &self.store.describe())
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Store>,
        monthly_credits: f64,
        rate_limit: u32,
        lease: Duration,
        clock: Clock,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let replica = format!(
            "{}-{}-{:x}",
            host.trim(),
            std::process::id(),
            clock() ^ keys::random_u64()
        );
        Self {
            store,
            default_monthly: store::millicredits(monthly_credits),
            default_rate_limit: rate_limit,
            replica,
            lease,
            clock,
            held: Arc::default(),
            sandbox_daily_calls: SANDBOX_DAILY_CALLS,
        }
    }

    /// Sandbox keys get `calls` a day instead of PhotoRoom's 100.
    pub fn with_sandbox_daily_calls(mut self, calls: i64) -> Self {
        self.sandbox_daily_calls = calls;
        self
    }

    pub fn sandbox_daily_calls(&self) -> i64 {
        self.sandbox_daily_calls
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Unix seconds by the server's clock.
    pub fn now(&self) -> i64 {
        (self.clock)() as i64
    }

    /// The live key presented, if any.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Key>, StoreError> {
        let hash = keys::hash(presented);
        let key = self.store.key_by_hash(&hash).await?;
        // The lookup went by the hash of a 192-bit secret, so its timing tells nothing
        // useful; the comparison is constant-time all the same.
        Ok(key.filter(|k| keys::same_hash(&k.hash, &hash)))
    }

    /// The key's monthly allowance: its own, the server's, or a sandbox's free calls.
    pub fn allowance(&self, key: &Key) -> i64 {
        if key.sandbox {
            SANDBOX_MONTHLY_CALLS * MILLI
        } else {
            key.monthly_millicredits.unwrap_or(self.default_monthly)
        }
    }

    pub async fn balance(&self, key: &Key) -> Result<Balance, StoreError> {
        let month = store::month_of(self.now());
        self.store
            .balance(key.id, &month, self.allowance(key))
            .await
    }

    /// Holds `credits` for one request (a sandbox key holds one of its free calls, within
    /// its day's), or says why the key cannot have it.
    pub async fn reserve(
        &self,
        key: &Key,
        credits: f64,
    ) -> Result<Result<Held, Refused>, StoreError> {
        let millicredits = if key.sandbox {
            MILLI
        } else {
            store::millicredits(credits)
        };
        let now = self.now();
        let month = store::month_of(now);
        let hold = Hold {
            key_id: key.id,
            millicredits,
            month: &month,
            allowance: self.allowance(key),
            now,
            expires_at: now + self.lease.as_secs() as i64,
            replica: &self.replica,
            daily_calls: key.sandbox.then_some(self.sandbox_daily_calls),
        };
        let Some(id) = self.store.reserve(&hold).await? else {
            // Which limit it was: a sandbox key with free calls left this month used up its
            // day's (one more read, on refusals only).
            if key.sandbox && self.balance(key).await?.available() >= MILLI {
                return Ok(Err(Refused::SandboxDay {
                    resets_at: store::day_start(now) + 86_400,
                }));
            }
            return Ok(Err(Refused::Credits));
        };
        self.held.lock().expect("held lock").insert(id);
        Ok(Ok(Held {
            store: self.store.clone(),
            held: self.held.clone(),
            id: Some(id),
            key_id: key.id,
            charged: if key.sandbox { 0 } else { millicredits },
        }))
    }

    /// Takes `units` from the key's current minute: `Ok(budget)` when they fit, `Err(budget)`
    /// (nothing taken) when not; `None` when the key has no limit.
    pub async fn take_rate(
        &self,
        key: &Key,
        units: u32,
    ) -> Result<Option<Result<Budget, Budget>>, StoreError> {
        let limit = key.rate_limit.unwrap_or(self.default_rate_limit);
        if limit == 0 {
            return Ok(None);
        }
        let minute = self.now().div_euclid(60);
        let budget = |used| minute_budget(limit, minute, used);
        Ok(Some(
            match self.store.take_rate(key.id, minute, units, limit).await? {
                RateTake::Taken { used } => Ok(budget(used)),
                RateTake::Refused { used } => Err(budget(used)),
            },
        ))
    }

    /// What the key has left in the current minute, taking nothing; `None` when it has no
    /// limit.
    pub async fn rate_budget(&self, key: &Key) -> Result<Option<Budget>, StoreError> {
        let limit = key.rate_limit.unwrap_or(self.default_rate_limit);
        if limit == 0 {
            return Ok(None);
        }
        let minute = self.now().div_euclid(60);
        let used = self.store.rate_used(key.id, minute).await?;
        Ok(Some(minute_budget(limit, minute, used)))
    }

    /// Records a request that charged nothing.
    pub async fn record(&self, usage: &UsageRow<'_>) {
        if let Err(e) = self.store.record(usage).await {
            log::warn!("could not record usage: {e}");
        }
    }

    /// Renews this replica's leases and releases expired ones (any replica's) every third of
    /// a lease, until the returned task is aborted.
    pub fn keep_leases(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let accounts = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((accounts.lease / 3).max(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                let now = accounts.now();
                let expires_at = now + accounts.lease.as_secs() as i64;
                let held: Vec<i64> = accounts
                    .held
                    .lock()
                    .expect("held lock")
                    .iter()
                    .copied()
                    .collect();
                for id in held {
                    if let Err(e) = accounts.store.renew(id, expires_at).await {
                        log::warn!("could not renew a credit hold: {e}");
                    }
                }
                match accounts.store.expire(now).await {
                    Ok(0) => {}
                    Ok(n) => log::info!("released {n} credit holds whose replica stopped renewing"),
                    Err(e) => log::warn!("could not release expired credit holds: {e}"),
                }
            }
        })
    }
}

/// What `used` of `limit` units leaves in clock minute `minute` (Unix seconds / 60).
fn minute_budget(limit: u32, minute: i64, used: u32) -> Budget {
    Budget {
        limit,
        remaining: limit.saturating_sub(used),
        reset: ((minute + 1) * 60) as u64,
    }
}

/// Credits held for one request: charged by [`Held::commit`] once its image is ready, given
/// back when dropped without it (an error, a client gone, a panic). If the release cannot
/// reach the database, the hold's lease runs out and any replica releases it.
#[derive(Debug)]
pub struct Held {
    store: Arc<dyn Store>,
    held: Arc<Mutex<HashSet<i64>>>,
    /// `None` once committed.
    id: Option<i64>,
    key_id: i64,
    /// What the usage history records as charged (nothing for a sandbox key).
    charged: i64,
}

impl Held {
    /// Charges the hold and records the request; `Ok(false)` when the hold was released
    /// meanwhile (its lease ran out), so nothing was charged.
    pub async fn commit(
        mut self,
        at: i64,
        endpoint: &str,
        megapixels: f64,
        duration_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = self.id.take().expect("committed once");
        self.held.lock().expect("held lock").remove(&id);
        let usage = UsageRow {
            key_id: self.key_id,
            at,
            endpoint,
            megapixels,
            millicredits: self.charged,
            status: 200,
            duration_ms,
        };
        self.store.commit(id, &usage).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        // Also runs while unwinding: a poisoned set is still a consistent set of ids.
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release(id).await {
                    log::warn!("could not release a credit hold (its lease will): {e}");
                }
            });
        }
    }
}
