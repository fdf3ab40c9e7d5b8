//! The store's SQL, one implementation for SQLite and PostgreSQL (the statements are portable:
//! `$N` parameters, `ON CONFLICT … DO UPDATE … WHERE`, `RETURNING`), but for [`Backend`]'s
//! reserve and commit.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, Postgres};
use sqlx::query::Query;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, SqlSafeStr, Type,
};

use super::group_commit::GroupCommit;
use super::{
    Balance, DayUsage, Hold, Key, NewKey, Plan, RateTake, Store, StoreError, UsageRow, day_start,
};

/// What differs between the two databases: how a reservation and a commit are made atomic
/// in as few round trips as each allows (the ledger's throughput is round trips: measured,
/// 11 statements per reserve + commit pair capped it near 700 pairs/s on either database).
#[async_trait]
pub trait Backend: Database {
    /// [`Store::reserve`].
    async fn reserve(pool: &Pool<Self>, hold: &Hold<'_>) -> Result<Option<i64>, StoreError>;
    /// [`Store::commit`].
    async fn commit(
        pool: &Pool<Self>,
        reservation: i64,
        usage: &UsageRow<'_>,
    ) -> Result<bool, StoreError>;
}

/// SQLite: one `BEGIN IMMEDIATE` transaction (the write lock up front, so other processes on
/// the file wait rather than fail) running one multi-statement query: sqlx-sqlite binds `$N`
/// across the statements and runs them in one trip to its connection thread.
#[async_trait]
impl Backend for Sqlite {
    async fn reserve(pool: &Pool<Self>, hold: &Hold<'_>) -> Result<Option<i64>, StoreError> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let query = sqlx::query(
            "DELETE FROM reservations WHERE key_id = $1 AND expires_at < $5; \
             INSERT INTO reservations \
               (key_id, replica, month, subscription_millicredits, payg_millicredits, \
                expires_at) \
             SELECT $1, $6, $2, MIN($3, subscription_left), \
                    $3 - MIN($3, subscription_left), $7 \
             FROM (SELECT MAX(0, $4 - used - subscription_held) AS subscription_left, \
                          MAX(0, payg - payg_held) AS payg_left \
                   FROM (SELECT \
                           COALESCE((SELECT used_millicredits FROM month_usage \
                                     WHERE key_id = $1 AND month = $2), 0) AS used, \
                           COALESCE((SELECT subscription_millicredits FROM holds \
                                     WHERE key_id = $1), 0) AS subscription_held, \
                           payg_millicredits AS payg, \
                           COALESCE((SELECT payg_millicredits FROM holds \
                                     WHERE key_id = $1), 0) AS payg_held \
                         FROM keys WHERE id = $1)) \
             WHERE subscription_left + payg_left >= $3 \
               AND ($8 IS NULL OR $8 > \
                    (SELECT COUNT(*) FROM usage WHERE key_id = $1 AND at >= $9 AND status = 200) \
                    + (SELECT COUNT(*) FROM reservations WHERE key_id = $1)) \
             RETURNING id",
        );
        let rows = bind_hold(query, hold).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?)
    }

    async fn commit(
        pool: &Pool<Self>,
        reservation: i64,
        usage: &UsageRow<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        // Each statement reads the reservation, so a released one charges nothing.
        let rows = sqlx::query(
            "INSERT INTO month_usage (key_id, month, used_millicredits) \
               SELECT key_id, month, subscription_millicredits FROM reservations \
               WHERE id = $1 \
               ON CONFLICT (key_id, month) DO UPDATE SET used_millicredits = \
                 month_usage.used_millicredits + excluded.used_millicredits; \
             UPDATE keys SET \
               payg_millicredits = payg_millicredits \
                 - (SELECT payg_millicredits FROM reservations WHERE id = $1), \
               last_used_at = $2 \
             WHERE id = (SELECT key_id FROM reservations WHERE id = $1) \
               AND (last_used_at IS NULL OR last_used_at < $2 - 60 \
                    OR (SELECT payg_millicredits FROM reservations WHERE id = $1) > 0); \
             INSERT INTO usage \
               (key_id, at, endpoint, megapixels, millicredits, status, duration_ms) \
               SELECT $8, $2, $3, $4, $5, $6, $7 \
               WHERE EXISTS (SELECT 1 FROM reservations WHERE id = $1); \
             DELETE FROM reservations WHERE id = $1 RETURNING id",
        )
        .bind(reservation)
        .bind(usage.at)
        .bind(usage.endpoint.to_string())
        .bind(usage.megapixels)
        .bind(usage.millicredits)
        .bind(i64::from(usage.status))
        .bind(usage.duration_ms)
        .bind(usage.key_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!rows.is_empty())
    }
}

/// PostgreSQL: one call each of the migration's `cutout_reserve` and `cutout_commit`
/// functions (one round trip; the key's row lock serialises reservations).
#[async_trait]
impl Backend for Postgres {
    async fn reserve(pool: &Pool<Self>, hold: &Hold<'_>) -> Result<Option<i64>, StoreError> {
        let query = sqlx::query("SELECT cutout_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)");
        let id: Option<i64> = bind_hold(query, hold).fetch_one(pool).await?.try_get(0)?;
        Ok(id)
    }

    async fn commit(
        pool: &Pool<Self>,
        reservation: i64,
        usage: &UsageRow<'_>,
    ) -> Result<bool, StoreError> {
        let committed: bool = sqlx::query("SELECT cutout_commit($1, $2, $3, $4, $5, $6, $7)")
            .bind(reservation)
            .bind(usage.at)
            .bind(usage.endpoint.to_string())
            .bind(usage.megapixels)
            .bind(usage.millicredits)
            .bind(i64::from(usage.status))
            .bind(usage.duration_ms)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        Ok(committed)
    }
}

#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    described: String,
    /// PostgreSQL's commits go through it; SQLite's one writer gains nothing from grouping.
    group_commit: Option<GroupCommit>,
}

/// The migrations of one backend: version, description, SQL.
fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

fn migrate_error(error: MigrateError) -> StoreError {
    match error {
        MigrateError::VersionMissing(version) => StoreError::NewerSchema(version),
        MigrateError::Execute(e) => StoreError::from(e),
        other => StoreError::Migrate(other),
    }
}

impl SqlStore<Sqlite> {
    /// Opens or creates the SQLite file at `path` (its folder too).
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let described = format!("sqlite://{}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // One connection: SQLite has one writer at a time, and writers in one process queued
        // on the pool wait for an event, where several connections would poll SQLite's busy
        // handler (sleeps of up to 100 ms). Other processes (`cutout keys` beside a running
        // server) wait on the busy timeout.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db) => StoreError::Foreign(described.clone(), db.to_string()),
                other => StoreError::from(other),
            })?;
        // A readable SQLite file that another program made: refuse rather than add tables.
        let foreign: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT \
               (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' \
                  AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'), \
               (SELECT COUNT(*) FROM sqlite_master WHERE name = '_sqlx_migrations')",
        )
        .fetch_one(&pool)
        .await;
        match foreign {
            Ok((tables, 0)) if tables > 0 => {
                return Err(StoreError::Foreign(
                    described,
                    format!("it has {tables} tables of another program"),
                ));
            }
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) => {
                return Err(StoreError::Foreign(described, db.to_string()));
            }
            Err(other) => return Err(other.into()),
        }
        migrator(&[(
            1,
            "accounts",
            include_str!("../../migrations/sqlite/0001_accounts.sql"),
        )])
        .run(&pool)
        .await
        .map_err(migrate_error)?;
        Ok(Self {
            pool,
            described,
            group_commit: None,
        })
    }
}

impl SqlStore<Postgres> {
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|_| StoreError::InvalidUrl(url.to_string()))?;
        let described = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        // Another program's `keys` table, never migrated by cutout: refuse it.
        let (keys, migrated): (bool, bool) = sqlx::query_as(
            "SELECT to_regclass('keys') IS NOT NULL, to_regclass('_sqlx_migrations') IS NOT NULL",
        )
        .fetch_one(&pool)
        .await?;
        if keys && !migrated {
            return Err(StoreError::Foreign(
                described,
                "it has a `keys` table that cutout did not create".into(),
            ));
        }
        migrator(&[
            (
                1,
                "accounts",
                include_str!("../../migrations/postgres/0001_accounts.sql"),
            ),
            (
                2,
                "sandbox days",
                include_str!("../../migrations/postgres/0002_sandbox_days.sql"),
            ),
        ])
        .run(&pool)
        .await
        .map_err(migrate_error)?;
        Ok(Self {
            group_commit: Some(GroupCommit::start(pool.clone())),
            pool,
            described,
        })
    }
}

/// The columns [`key_from_row`] reads, in its order.
macro_rules! key_columns {
    () => {
        "id, name, hash, plan, sandbox, admin, monthly_millicredits, rate_limit, \
         payg_millicredits, created_at, last_used_at"
    };
}

/// Subscription used this month, subscription held, pay-as-you-go left and held, of key `$1`
/// in month `$2`.
const BALANCE: &str = "SELECT \
      COALESCE((SELECT used_millicredits FROM month_usage WHERE key_id = $1 AND month = $2), 0), \
      COALESCE((SELECT subscription_millicredits FROM holds WHERE key_id = $1), 0), \
      payg_millicredits, \
      COALESCE((SELECT payg_millicredits FROM holds WHERE key_id = $1), 0) \
    FROM keys WHERE id = $1";

fn balance_from_row<R: Row>(row: &R, allowance: i64) -> Result<Balance, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Balance {
        allowance,
        subscription_used: row.try_get(0)?,
        subscription_held: row.try_get(1)?,
        payg: row.try_get(2)?,
        payg_held: row.try_get(3)?,
    })
}

fn key_from_row<R: Row>(row: &R) -> Result<Key, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let plan: String = row.try_get(3)?;
    let rate_limit: Option<i64> = row.try_get(7)?;
    Ok(Key {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        hash: row.try_get(2)?,
        plan: Plan::parse(&plan).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "plan".into(),
            source: format!("unknown plan '{plan}'").into(),
        })?,
        sandbox: row.try_get(4)?,
        admin: row.try_get(5)?,
        monthly_millicredits: row.try_get(6)?,
        rate_limit: rate_limit.map(|n| n.clamp(0, u32::MAX as i64) as u32),
        payg_millicredits: row.try_get(8)?,
        created_at: row.try_get(9)?,
        last_used_at: row.try_get(10)?,
    })
}

/// A hold's values as `$1`–`$9`, the order both backends' reserve statements read them in:
/// key, month, millicredits, allowance, now, replica, lease end, daily cap, the UTC day's start.
fn bind_hold<'q, DB: Database>(
    query: Query<'q, DB, DB::Arguments>,
    hold: &Hold<'_>,
) -> Query<'q, DB, DB::Arguments>
where
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
{
    query
        .bind(hold.key_id)
        .bind(hold.month.to_string())
        .bind(hold.millicredits)
        .bind(hold.allowance)
        .bind(hold.now)
        .bind(hold.replica.to_string())
        .bind(hold.expires_at)
        .bind(hold.daily_calls)
        .bind(day_start(hold.now))
}

fn insert_usage<'q, DB: Database>(usage: &UsageRow<'_>) -> Query<'q, DB, DB::Arguments>
where
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> f64: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO usage (key_id, at, endpoint, megapixels, millicredits, status, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(usage.key_id)
    .bind(usage.at)
    .bind(usage.endpoint.to_string())
    .bind(usage.megapixels)
    .bind(usage.millicredits)
    .bind(i64::from(usage.status))
    .bind(usage.duration_ms)
}

impl<DB: Backend> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    /// The live key that `query` (selecting [`key_columns`] by `$1`) finds.
    async fn live_key(&self, query: &'static str, value: &str) -> Result<Option<Key>, StoreError> {
        let row = sqlx::query(query)
            .bind(value.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| key_from_row(&r)).transpose()?)
    }
}

#[async_trait]
impl<DB: Backend> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_key(&self, key: &NewKey, hash: &str, now: i64) -> Result<Key, StoreError> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO keys (name, hash, plan, sandbox, admin, monthly_millicredits, \
             rate_limit, payg_millicredits, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
            key_columns!()
        ))
        .bind(key.name.clone())
        .bind(hash.to_string())
        .bind(key.plan.as_str())
        .bind(key.sandbox)
        .bind(key.admin)
        .bind(key.monthly_millicredits)
        .bind(key.rate_limit.map(i64::from))
        .bind(key.payg_millicredits)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => Ok(key_from_row(&row)?),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::NameTaken(key.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<Key>, StoreError> {
        self.live_key(
            concat!(
                "SELECT ",
                key_columns!(),
                " FROM keys WHERE hash = $1 AND revoked_at IS NULL"
            ),
            hash,
        )
        .await
    }

    async fn key_by_name(&self, name: &str) -> Result<Option<Key>, StoreError> {
        self.live_key(
            concat!(
                "SELECT ",
                key_columns!(),
                " FROM keys WHERE name = $1 AND revoked_at IS NULL"
            ),
            name,
        )
        .await
    }

    async fn keys(&self) -> Result<Vec<Key>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE revoked_at IS NULL ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    async fn revoke(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(name.to_string())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(done.is_some())
    }

    async fn add_credits(&self, name: &str, millicredits: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE keys SET payg_millicredits = payg_millicredits + $2 \
             WHERE name = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(name.to_string())
        .bind(millicredits)
        .fetch_optional(&self.pool)
        .await?;
        Ok(done.is_some())
    }

    async fn reserve(&self, hold: &Hold<'_>) -> Result<Option<i64>, StoreError> {
        DB::reserve(&self.pool, hold).await
    }

    async fn commit(&self, reservation: i64, usage: &UsageRow<'_>) -> Result<bool, StoreError> {
        match &self.group_commit {
            Some(group) => group.commit(reservation, usage).await,
            None => DB::commit(&self.pool, reservation, usage).await,
        }
    }

    async fn release(&self, reservation: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM reservations WHERE id = $1")
            .bind(reservation)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn renew(&self, reservation: i64, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE reservations SET expires_at = $2 WHERE id = $1")
            .bind(reservation)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire(&self, now: i64) -> Result<u64, StoreError> {
        let released = sqlx::query("DELETE FROM reservations WHERE expires_at < $1 RETURNING id")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        sqlx::query("DELETE FROM rate_windows WHERE minute < $1")
            .bind(now.div_euclid(60) - 1)
            .execute(&self.pool)
            .await?;
        Ok(released.len() as u64)
    }

    async fn take_rate(
        &self,
        key_id: i64,
        minute: i64,
        cost: u32,
        limit: u32,
    ) -> Result<RateTake, StoreError> {
        if cost <= limit {
            let taken = sqlx::query(
                "INSERT INTO rate_windows (key_id, minute, used) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id, minute) DO UPDATE \
                 SET used = rate_windows.used + excluded.used \
                 WHERE rate_windows.used + excluded.used <= $4 \
                 RETURNING used",
            )
            .bind(key_id)
            .bind(minute)
            .bind(i64::from(cost))
            .bind(i64::from(limit))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = taken {
                let used: i64 = row.try_get(0)?;
                return Ok(RateTake::Taken { used: used as u32 });
            }
        }
        Ok(RateTake::Refused {
            used: self.rate_used(key_id, minute).await?,
        })
    }

    async fn rate_used(&self, key_id: i64, minute: i64) -> Result<u32, StoreError> {
        let used: Option<i64> =
            sqlx::query("SELECT used FROM rate_windows WHERE key_id = $1 AND minute = $2")
                .bind(key_id)
                .bind(minute)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        Ok(used.unwrap_or(0) as u32)
    }

    async fn balance(
        &self,
        key_id: i64,
        month: &str,
        allowance: i64,
    ) -> Result<Balance, StoreError> {
        let row = sqlx::query(BALANCE)
            .bind(key_id)
            .bind(month.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => balance_from_row(&row, allowance)?,
            None => Balance::default(),
        })
    }

    async fn record(&self, usage: &UsageRow<'_>) -> Result<(), StoreError> {
        insert_usage(usage).execute(&self.pool).await?;
        Ok(())
    }

    async fn usage_by_day(&self, key_id: i64, since: i64) -> Result<Vec<DayUsage>, StoreError> {
        let rows = sqlx::query(
            "SELECT at / 86400 AS day, COUNT(*), \
               CAST(SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END) AS BIGINT), \
               CAST(SUM(millicredits) AS BIGINT), \
               CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) \
             FROM usage WHERE key_id = $1 AND at >= $2 \
             GROUP BY at / 86400 ORDER BY day",
        )
        .bind(key_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DayUsage {
                    day: row.try_get(0)?,
                    requests: row.try_get(1)?,
                    images: row.try_get(2)?,
                    millicredits: row.try_get(3)?,
                    errors: row.try_get(4)?,
                })
            })
            .collect()
    }
}
