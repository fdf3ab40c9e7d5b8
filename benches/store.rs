//! The accounts ledger's throughput: reserve + commit pairs per second on SQLite and on
//! PostgreSQL, with 1, 8 and 32 callers at once, all on one key (the contended case: every
//! pair locks the same key) and each on a key of its own. Not a test: it prints the figures.
//!
//! `cargo bench --profile dev --bench store [-- SECONDS]` (default 5 s per run). PostgreSQL:
//! `CUTOUT_BENCH_DATABASE_URL`, else `CUTOUT_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; each run gets a fresh database on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutout_server::store::{self, Hold, NewKey, Store, UsageRow};

const CALLERS: [usize; 3] = [1, 8, 32];

async fn pairs_per_second(
    store: Arc<dyn Store>,
    callers: usize,
    shared_key: bool,
    seconds: f64,
) -> f64 {
    let mut keys = Vec::new();
    for n in 0..if shared_key { 1 } else { callers } {
        let name = format!("bench{n}");
        let key = store.create_key(&NewKey::named(&name), &name, 0).await;
        keys.push(key.unwrap().id);
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (store, done) = (store.clone(), done.clone());
            let key = keys[caller % keys.len()];
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let hold = Hold {
                        key_id: key,
                        millicredits: 250,
                        month: "2026-12",
                        allowance: i64::MAX / 4,
                        now: 1_796_256_000,
                        expires_at: 1_796_256_120,
                        replica: "bench",
                        daily_calls: None,
                    };
                    let id = store.reserve(&hold).await.unwrap().expect("allowance");
                    let usage = UsageRow {
                        key_id: key,
                        at: 1_796_256_000,
                        endpoint: "/v1/segment",
                        megapixels: 1.0,
                        millicredits: 250,
                        status: 200,
                        duration_ms: 300,
                    };
                    assert!(store.commit(id, &usage).await.unwrap());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn fresh_postgres(url: &str, n: usize) -> String {
    let name = format!("cutout_bench_{}_{n}", std::process::id());
    let admin = sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {url}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = url.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{name}")
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5.0);
    let postgres = std::env::var("CUTOUT_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("CUTOUT_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("reserve+commit pairs per second, {seconds} s per run");
        println!(
            "{:<12} {:>8} {:>12} {:>12}",
            "store", "callers", "one key", "a key each"
        );
        let mut n = 0;
        for backend in ["sqlite", "postgresql"] {
            for callers in CALLERS {
                let mut rates = [0.0; 2];
                for (rate, shared) in rates.iter_mut().zip([true, false]) {
                    n += 1;
                    let dir = std::env::temp_dir()
                        .join(format!("cutout-bench-store-{}-{n}", std::process::id()));
                    std::fs::remove_dir_all(&dir).ok();
                    let url = match backend {
                        "sqlite" => format!("sqlite://{}", dir.join("cutout.db").display()),
                        _ => fresh_postgres(&postgres, n).await,
                    };
                    let store = store::open(&url).await.unwrap();
                    *rate = pairs_per_second(store, callers, shared, seconds).await;
                    std::fs::remove_dir_all(&dir).ok();
                }
                println!(
                    "{backend:<12} {callers:>8} {:>12.0} {:>12.0}",
                    rates[0], rates[1]
                );
            }
        }
    });
}
