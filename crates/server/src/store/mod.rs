//! Accounts: keys, credits, rate limits and usage history in a database. An embedded SQLite
//! file by default; PostgreSQL when several replicas share one ledger. Both run the same SQL
//! ([`sql::SqlStore`], generic over the sqlx driver), except the two hot operations, reserve
//! and commit, which each database makes atomic in one round trip its own way (a
//! multi-statement query in a `BEGIN IMMEDIATE` transaction on SQLite, a PL/pgSQL function
//! on PostgreSQL), and their migrations' column types.
//!
//! Queries are plain `sqlx::query` strings rather than the checked `query!` macros: those
//! check against one `DATABASE_URL` per crate, and this crate has two databases. Instead the
//! one contract suite (`tests/store.rs`) runs every query on a real SQLite file and a real
//! PostgreSQL, and building needs no database.
//!
//! Times are Unix seconds passed in by the caller (the server's clock, a fixed one in tests);
//! credits are integer millicredits, so a month of quarter-credit previews sums exactly.

mod group_commit;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;

pub use sql::SqlStore;

/// Millicredits in one credit.
pub const MILLI: i64 = 1000;

/// Whole or fractional credits (0.25 for a preview) in millicredits.
pub fn millicredits(credits: f64) -> i64 {
    (credits * MILLI as f64).round() as i64
}

/// Millicredits as the decimal credits the APIs report.
pub fn credits(millicredits: i64) -> f64 {
    millicredits as f64 / MILLI as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// PhotoRoom's Basic plan: every image costs one credit.
    Basic,
    /// PhotoRoom's Plus plan: a `/v1/segment` call costs 0.2 of an image.
    Plus,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Basic => "basic",
            Plan::Plus => "plus",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "basic" => Some(Plan::Basic),
            "plus" => Some(Plan::Plus),
            _ => None,
        }
    }
}

/// What `keys create` asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub plan: Plan,
    pub sandbox: bool,
    pub admin: bool,
    /// The monthly subscription allowance; `None` uses the server's `--credits`.
    pub monthly_millicredits: Option<i64>,
    /// Units per minute; `None` uses the server's `--rate-limit`.
    pub rate_limit: Option<u32>,
    /// Pay-as-you-go credits to start with (`keys import` carries them over).
    pub payg_millicredits: i64,
}

impl NewKey {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            plan: Plan::Basic,
            sandbox: false,
            admin: false,
            monthly_millicredits: None,
            rate_limit: None,
            payg_millicredits: 0,
        }
    }
}

/// A live (not revoked) key as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub id: i64,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    pub plan: Plan,
    pub sandbox: bool,
    pub admin: bool,
    pub monthly_millicredits: Option<i64>,
    pub rate_limit: Option<u32>,
    /// Pay-as-you-go credits left (not counting what requests in flight hold).
    pub payg_millicredits: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Credits to hold for one request, taken from the subscription first, then pay-as-you-go.
#[derive(Debug, Clone, Copy)]
pub struct Hold<'a> {
    pub key_id: i64,
    pub millicredits: i64,
    /// The calendar month whose subscription pays (`YYYY-MM`).
    pub month: &'a str,
    /// The key's monthly allowance for that month.
    pub allowance: i64,
    pub now: i64,
    /// The lease: when another replica may release the hold if this one has not renewed it.
    pub expires_at: i64,
    pub replica: &'a str,
    /// Most requests the key may have answered with an image in the UTC day of `now`,
    /// counting those in flight (sandbox keys: PhotoRoom's 100 calls a day); `None`: no cap.
    pub daily_calls: Option<i64>,
}

/// A key's credits in one month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    pub allowance: i64,
    pub subscription_used: i64,
    /// Held by requests in flight.
    pub subscription_held: i64,
    pub payg: i64,
    pub payg_held: i64,
}

impl Balance {
    pub fn subscription_left(&self) -> i64 {
        (self.allowance - self.subscription_used - self.subscription_held).max(0)
    }

    pub fn payg_left(&self) -> i64 {
        (self.payg - self.payg_held).max(0)
    }

    pub fn available(&self) -> i64 {
        self.subscription_left() + self.payg_left()
    }
}

/// One processed request, as the usage history keeps it (never the image).
#[derive(Debug, Clone, Copy)]
pub struct UsageRow<'a> {
    pub key_id: i64,
    pub at: i64,
    pub endpoint: &'a str,
    pub megapixels: f64,
    pub millicredits: i64,
    pub status: u16,
    pub duration_ms: i64,
}

/// One day of a key's usage history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayUsage {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub requests: i64,
    /// Requests answered with an image (status 200).
    pub images: i64,
    pub millicredits: i64,
    /// Requests answered with a 4xx or 5xx.
    pub errors: i64,
}

/// The outcome of taking units from a key's minute; `used` counts units taken in that minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateTake {
    Taken { used: u32 },
    Refused { used: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("'{0}' is not a store URL: give sqlite://PATH or postgres://USER@HOST/DATABASE")]
    InvalidUrl(String),
    /// The database cannot be reached now (connection refused, pool timed out): worth a retry.
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("{0} is not a cutout database ({1})")]
    Foreign(String, String),
    #[error(
        "the database was migrated by a newer cutout (migration {0} is unknown to this one): \
         upgrade cutout"
    )]
    NewerSchema(i64),
    #[error("a key named '{0}' exists")]
    NameTaken(String),
    #[error("migrating the database: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// A failure that a retry may not see (the database is down or busy), not a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The accounts ledger. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite://PATH` or `postgres://HOST/DATABASE` (no password), for logs.
    fn describe(&self) -> String;
    /// One round trip to the database (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Stores a key under its hash; [`StoreError::NameTaken`] when a live key has the name.
    async fn create_key(&self, key: &NewKey, hash: &str, now: i64) -> Result<Key, StoreError>;
    /// The live key with this hash.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<Key>, StoreError>;
    async fn key_by_name(&self, name: &str) -> Result<Option<Key>, StoreError>;
    /// Live keys, by name.
    async fn keys(&self) -> Result<Vec<Key>, StoreError>;
    /// Revokes the live key `name`; `false` when there is none.
    async fn revoke(&self, name: &str, now: i64) -> Result<bool, StoreError>;
    /// Adds pay-as-you-go credits to the live key `name`; `false` when there is none.
    async fn add_credits(&self, name: &str, millicredits: i64) -> Result<bool, StoreError>;
    /// Holds `hold.millicredits` when the key's subscription and pay-as-you-go credits, less
    /// what other requests hold, cover them, and the key is within `hold.daily_calls`; first
    /// releases the key's expired holds. Checking and holding are one transaction, so
    /// parallel requests never spend a credit (or a call) twice. Returns the reservation's
    /// id, or `None` when the balance is too low or the day's calls are used up.
    async fn reserve(&self, hold: &Hold<'_>) -> Result<Option<i64>, StoreError>;
    /// Charges a reservation and records its request in the usage history, in one
    /// transaction; `false` (nothing charged) when the reservation no longer exists.
    async fn commit(&self, reservation: i64, usage: &UsageRow<'_>) -> Result<bool, StoreError>;
    /// Gives a reservation's credits back.
    async fn release(&self, reservation: i64) -> Result<(), StoreError>;
    /// Extends a reservation's lease (its replica is still working on the request).
    async fn renew(&self, reservation: i64, expires_at: i64) -> Result<(), StoreError>;
    /// Releases every reservation whose lease ended before `now` (a replica that died
    /// mid-request) and forgets rate windows older than the previous minute; returns the
    /// reservations released.
    async fn expire(&self, now: i64) -> Result<u64, StoreError>;
    /// Takes `cost` units of `limit` from the key's clock minute `minute` (Unix seconds / 60).
    async fn take_rate(
        &self,
        key_id: i64,
        minute: i64,
        cost: u32,
        limit: u32,
    ) -> Result<RateTake, StoreError>;
    /// Units taken from the key's clock minute `minute` so far.
    async fn rate_used(&self, key_id: i64, minute: i64) -> Result<u32, StoreError>;
    async fn balance(
        &self,
        key_id: i64,
        month: &str,
        allowance: i64,
    ) -> Result<Balance, StoreError>;
    /// Records a request that charged nothing (an error, a refusal).
    async fn record(&self, usage: &UsageRow<'_>) -> Result<(), StoreError>;
    /// The key's usage history per UTC day since `since` (Unix seconds), oldest first.
    async fn usage_by_day(&self, key_id: i64, since: i64) -> Result<Vec<DayUsage>, StoreError>;
}

/// Opens (creating if needed) the store at `url` and applies its migrations:
/// `sqlite://PATH` (also `sqlite:PATH`) or `postgres://…` / `postgresql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::InvalidUrl(url.to_string()));
        }
        Ok(Arc::new(
            SqlStore::open_sqlite(std::path::Path::new(path)).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(SqlStore::open_postgres(url).await?))
    } else {
        Err(StoreError::InvalidUrl(url.to_string()))
    }
}

/// The start (Unix seconds) of the UTC day of Unix time `seconds`.
pub fn day_start(seconds: i64) -> i64 {
    seconds - seconds.rem_euclid(86_400)
}

/// The calendar month (UTC, `YYYY-MM`) of Unix time `seconds`.
pub fn month_of(seconds: i64) -> String {
    // Howard Hinnant's civil-from-days.
    let z = seconds.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_from_unix_seconds() {
        let day = 86_400;
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(20778 * day), "2026-11");
        assert_eq!(month_of(19782 * day), "2024-02");
        assert_eq!(month_of(11017 * day), "2000-03");
        assert_eq!(month_of(10956 * day + day - 1), "1999-12");
    }

    #[test]
    fn quarter_credits_are_exact() {
        assert_eq!(millicredits(0.25), 250);
        assert_eq!(millicredits(0.2) * 5, MILLI);
        assert_eq!(credits(millicredits(0.25) * 4), 1.0);
    }
}
