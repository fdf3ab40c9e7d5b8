//! PostgreSQL group commit: the commits that arrive while one transaction is flushing its WAL
//! go together in the next, one statement and one flush for all of them.
//!
//! Why: a commit on a key holds that key's row until its transaction is durable (about 140 µs
//! of WAL flush on the benchmark machine), so one commit per transaction caps a busy key near
//! 900 pairs/s however many replicas or connections serve it. Gathered, the flush is paid once
//! per group. Each commit keeps its own result (`false`: its reservation was already released).

use sqlx::{Pool, Postgres, Row};
use tokio::sync::{mpsc, oneshot};

use super::sql::Backend;
use super::{StoreError, UsageRow};

/// The most commits one transaction carries: enough to amortise the flush, small enough that a
/// group's locks are held briefly.
const MAX_GROUP: usize = 64;

/// A commit waiting for its group, with the usage row it records.
struct Pending {
    reservation: i64,
    key_id: i64,
    at: i64,
    endpoint: String,
    megapixels: f64,
    millicredits: i64,
    status: u16,
    duration_ms: i64,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// The handle of the task that runs the groups; the task ends when the handle is dropped.
#[derive(Debug)]
pub struct GroupCommit {
    sender: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Starts the committing task on the current tokio runtime.
    pub fn start(pool: Pool<Postgres>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, receiver));
        Self { sender }
    }

    /// Charges `reservation` and records `usage` as [`super::Store::commit`] does, in the next
    /// group.
    pub async fn commit(&self, reservation: i64, usage: &UsageRow<'_>) -> Result<bool, StoreError> {
        let (done, result) = oneshot::channel();
        let pending = Pending {
            reservation,
            key_id: usage.key_id,
            at: usage.at,
            endpoint: usage.endpoint.to_string(),
            megapixels: usage.megapixels,
            millicredits: usage.millicredits,
            status: usage.status,
            duration_ms: usage.duration_ms,
            done,
        };
        self.sender
            .send(pending)
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?
    }
}

/// One group at a time: what queued while the previous group was in the database is the
/// next group, so groups grow with the load and a lone commit waits for nothing.
async fn run(pool: Pool<Postgres>, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        // Keys are locked in one order by every group (and a reservation locks one key), so
        // two replicas' groups cannot wait on each other.
        group.sort_by_key(|p| (p.key_id, p.reservation));
        match commit_group(&pool, &group).await {
            Ok(committed) => {
                for (pending, committed) in group.drain(..).zip(committed) {
                    let _ = pending.done.send(Ok(committed));
                }
            }
            // The group's transaction rolled back as a whole (a deadlock with the expirer, the
            // database going away): each commit is tried alone, so each gets its own answer.
            Err(error) => {
                log::debug!(
                    "group commit of {} failed, retried one by one: {error}",
                    group.len()
                );
                for pending in group.drain(..) {
                    let result = commit_one(&pool, &pending).await;
                    let _ = pending.done.send(result);
                }
            }
        }
    }
}

/// All of `group` in one statement (one transaction): `cutout_commit` for each, in order.
async fn commit_group(pool: &Pool<Postgres>, group: &[Pending]) -> Result<Vec<bool>, StoreError> {
    let column = |f: fn(&Pending) -> i64| group.iter().map(f).collect::<Vec<_>>();
    let rows = sqlx::query(
        "SELECT cutout_commit(r, a, e, m, c, s, d) \
         FROM unnest($1::int8[], $2::int8[], $3::text[], $4::float8[], $5::int8[], $6::int8[], \
                     $7::int8[]) WITH ORDINALITY AS t(r, a, e, m, c, s, d, n) \
         ORDER BY n",
    )
    .bind(column(|p| p.reservation))
    .bind(column(|p| p.at))
    .bind(group.iter().map(|p| p.endpoint.clone()).collect::<Vec<_>>())
    .bind(group.iter().map(|p| p.megapixels).collect::<Vec<_>>())
    .bind(column(|p| p.millicredits))
    .bind(column(|p| i64::from(p.status)))
    .bind(column(|p| p.duration_ms))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<bool, _>(0)?))
        .collect()
}

async fn commit_one(pool: &Pool<Postgres>, pending: &Pending) -> Result<bool, StoreError> {
    let usage = UsageRow {
        key_id: pending.key_id,
        at: pending.at,
        endpoint: &pending.endpoint,
        megapixels: pending.megapixels,
        millicredits: pending.millicredits,
        status: pending.status,
        duration_ms: pending.duration_ms,
    };
    <Postgres as Backend>::commit(pool, pending.reservation, &usage).await
}
