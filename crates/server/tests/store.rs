//! The accounts store's contract, run against a real SQLite file and a real PostgreSQL
//! (`CUTOUT_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; `cargo
//! xtask test` starts a throwaway cluster when none is reachable). Each test gets a fresh
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cutout_server::store::{
    self, Balance, Hold, MILLI, NewKey, Plan, RateTake, Store, StoreError, UsageRow,
};

mod common;

async fn fresh_postgres() -> String {
    common::fresh_postgres("cutout_test").await
}

fn fresh_sqlite_path() -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cutout-store-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::remove_dir_all(&dir).ok();
    dir.join("cutout.db")
}

/// Runs one contract test on each backend.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let path = super::fresh_sqlite_path();
                let store = super::store::open(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                super::$name(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let store = super::store::open(&super::fresh_postgres().await)
                    .await
                    .unwrap();
                super::$name(store).await;
            }
        }
    };
}

const NOW: i64 = 1_780_000_000; // 2026-05-28, 20:26:40 UTC
const MONTH: &str = "2026-05";

fn hold<'a>(key_id: i64, credits: f64, allowance: f64) -> Hold<'a> {
    Hold {
        key_id,
        millicredits: store::millicredits(credits),
        month: MONTH,
        allowance: store::millicredits(allowance),
        now: NOW,
        expires_at: NOW + 60,
        replica: "replica-a",
        daily_calls: None,
    }
}

fn usage(key_id: i64, at: i64, credits: f64, status: u16) -> UsageRow<'static> {
    UsageRow {
        key_id,
        at,
        endpoint: "/v1/segment",
        megapixels: 0.3,
        millicredits: store::millicredits(credits),
        status,
        duration_ms: 120,
    }
}

contract!(keys_are_created_found_listed_and_revoked);
async fn keys_are_created_found_listed_and_revoked(store: Arc<dyn Store>) {
    let mut shop = NewKey::named("shop");
    shop.plan = Plan::Plus;
    shop.rate_limit = Some(60);
    shop.monthly_millicredits = Some(5 * MILLI);
    let created = store.create_key(&shop, "hash-shop", NOW).await.unwrap();
    assert_eq!(created.name, "shop");
    assert_eq!(created.plan, Plan::Plus);
    assert_eq!(created.rate_limit, Some(60));
    assert_eq!(created.monthly_millicredits, Some(5000));
    assert_eq!(created.created_at, NOW);
    assert!(!created.sandbox && !created.admin);
    let mut admin = NewKey::named("ops");
    admin.admin = true;
    admin.sandbox = true;
    store.create_key(&admin, "hash-ops", NOW).await.unwrap();

    match store
        .create_key(&NewKey::named("shop"), "hash-2", NOW)
        .await
    {
        Err(StoreError::NameTaken(name)) => assert_eq!(name, "shop"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert_eq!(store.key_by_hash("hash-shop").await.unwrap(), Some(created));
    let ops = store.key_by_name("ops").await.unwrap().unwrap();
    assert!(ops.admin && ops.sandbox);
    assert!(store.key_by_hash("nothing").await.unwrap().is_none());
    let names: Vec<String> = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["ops", "shop"]);

    assert!(store.add_credits("shop", 2500).await.unwrap());
    assert!(!store.add_credits("nobody", 2500).await.unwrap());
    assert_eq!(
        store
            .key_by_name("shop")
            .await
            .unwrap()
            .unwrap()
            .payg_millicredits,
        2500
    );

    assert!(store.revoke("shop", NOW + 5).await.unwrap());
    assert!(!store.revoke("shop", NOW + 6).await.unwrap());
    assert!(store.key_by_hash("hash-shop").await.unwrap().is_none());
    // The name is free again; the revoked key stays revoked.
    store
        .create_key(&NewKey::named("shop"), "hash-shop-2", NOW)
        .await
        .unwrap();
    assert!(store.key_by_hash("hash-shop").await.unwrap().is_none());
    assert!(store.key_by_hash("hash-shop-2").await.unwrap().is_some());
}

contract!(subscription_is_spent_before_payg_and_holds_count);
async fn subscription_is_spent_before_payg_and_holds_count(store: Arc<dyn Store>) {
    let mut new = NewKey::named("shop");
    new.payg_millicredits = MILLI;
    let key = store.create_key(&new, "h", NOW).await.unwrap().id;
    // Allowance 2 credits this month, 1 pay-as-you-go credit.
    let first = store.reserve(&hold(key, 1.0, 2.0)).await.unwrap().unwrap();
    let second = store.reserve(&hold(key, 1.0, 2.0)).await.unwrap().unwrap();
    assert_eq!(
        store.balance(key, MONTH, 2000).await.unwrap(),
        Balance {
            allowance: 2000,
            subscription_used: 0,
            subscription_held: 2000,
            payg: 1000,
            payg_held: 0
        }
    );
    let third = store.reserve(&hold(key, 0.75, 2.0)).await.unwrap().unwrap();
    assert_eq!(
        store.balance(key, MONTH, 2000).await.unwrap().payg_held,
        750
    );
    assert!(
        store.reserve(&hold(key, 0.5, 2.0)).await.unwrap().is_none(),
        "0.25 left"
    );
    let fourth = store.reserve(&hold(key, 0.25, 2.0)).await.unwrap().unwrap();

    store.release(second).await.unwrap();
    assert!(
        store
            .commit(first, &usage(key, NOW, 1.0, 200))
            .await
            .unwrap()
    );
    assert!(
        store
            .commit(third, &usage(key, NOW, 0.75, 200))
            .await
            .unwrap()
    );
    assert!(
        store
            .commit(fourth, &usage(key, NOW, 0.25, 200))
            .await
            .unwrap()
    );
    assert!(
        !store
            .commit(second, &usage(key, NOW, 1.0, 200))
            .await
            .unwrap(),
        "a released hold cannot be charged"
    );
    let balance = store.balance(key, MONTH, 2000).await.unwrap();
    assert_eq!(
        balance,
        Balance {
            allowance: 2000,
            subscription_used: 1000,
            subscription_held: 0,
            payg: 0,
            payg_held: 0
        }
    );
    assert_eq!(balance.available(), 1000);
    let key_row = store.key_by_hash("h").await.unwrap().unwrap();
    assert_eq!(key_row.last_used_at, Some(NOW));

    // Next month the subscription is whole again; pay-as-you-go does not come back.
    let next = store.balance(key, "2026-06", 2000).await.unwrap();
    assert_eq!((next.subscription_left(), next.payg_left()), (2000, 0));
}

contract!(parallel_reservations_never_overdraw);
async fn parallel_reservations_never_overdraw(store: Arc<dyn Store>) {
    let key = store
        .create_key(&NewKey::named("shop"), "h", NOW)
        .await
        .unwrap()
        .id;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let held = store.reserve(&hold(key, 1.0, 10.0)).await.unwrap();
                if let Some(id) = held {
                    assert!(store.commit(id, &usage(key, NOW, 1.0, 200)).await.unwrap());
                }
                held.is_some()
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap() as usize;
    }
    assert_eq!(granted, 10);
    let balance = store.balance(key, MONTH, 10_000).await.unwrap();
    assert_eq!(balance.subscription_used, 10_000);
    assert_eq!(balance.available(), 0);
}

contract!(concurrent_commits_each_get_their_own_answer);
/// Commits arriving together (PostgreSQL runs them as one group) answer each for itself: a
/// released reservation charges nothing, a reservation committed twice at once is charged
/// once, and the two keys' subscription and pay-as-you-go are each charged what they held.
async fn concurrent_commits_each_get_their_own_answer(store: Arc<dyn Store>) {
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let mut key = NewKey::named(name);
        key.payg_millicredits = store::millicredits(100.0);
        keys.push(store.create_key(&key, name, NOW).await.unwrap().id);
    }
    // 20 credits of subscription each: the first 20 holds spend it, the other 20 pay-as-you-go.
    let mut holds = Vec::new();
    for i in 0..80 {
        let key = keys[i % 2];
        let id = store.reserve(&hold(key, 1.0, 20.0)).await.unwrap().unwrap();
        holds.push((key, id));
    }
    // Every fourth is released; every fifth is committed twice at once.
    let released = |i: usize| i % 4 == 3;
    for (i, &(_, id)) in holds.iter().enumerate() {
        if released(i) {
            store.release(id).await.unwrap();
        }
    }
    let commits: Vec<_> = holds
        .iter()
        .enumerate()
        .flat_map(|(i, &(key, id))| std::iter::repeat_n((i, key, id), 1 + (i % 5 == 0) as usize))
        .map(|(i, key, id)| {
            let store = store.clone();
            tokio::spawn(async move {
                let committed = store.commit(id, &usage(key, NOW, 1.0, 200)).await.unwrap();
                (i, committed)
            })
        })
        .collect();
    let mut charged = [0usize; 80];
    for task in commits {
        let (i, committed) = task.await.unwrap();
        charged[i] += committed as usize;
    }
    for (i, &times) in charged.iter().enumerate() {
        assert_eq!(
            times,
            !released(i) as usize,
            "reservation {i} charged {times} times"
        );
    }
    for (k, &key) in keys.iter().enumerate() {
        let kept = (0..80).filter(|&i| i % 2 == k && !released(i)).count() as i64;
        let balance = store.balance(key, MONTH, 20_000).await.unwrap();
        assert_eq!(
            (balance.subscription_held, balance.payg_held),
            (0, 0),
            "key {k}: nothing held"
        );
        assert_eq!(
            balance.subscription_used + (100_000 - balance.payg),
            kept * 1000,
            "key {k}: charged exactly its {kept} images"
        );
        let days = store.usage_by_day(key, 0).await.unwrap();
        assert_eq!(days.iter().map(|d| d.images).sum::<i64>(), kept);
    }
}

contract!(expired_leases_are_released_and_renewed_ones_kept);
async fn expired_leases_are_released_and_renewed_ones_kept(store: Arc<dyn Store>) {
    let key = store
        .create_key(&NewKey::named("shop"), "h", NOW)
        .await
        .unwrap()
        .id;
    let dead = Hold {
        replica: "dead",
        ..hold(key, 1.0, 2.0)
    };
    let live = Hold {
        replica: "live",
        ..hold(key, 1.0, 2.0)
    };
    let dead_id = store.reserve(&dead).await.unwrap().unwrap();
    let live_id = store.reserve(&live).await.unwrap().unwrap();
    assert!(store.reserve(&hold(key, 1.0, 2.0)).await.unwrap().is_none());
    // The live replica renews its lease; the dead one cannot.
    store.renew(live_id, NOW + 600).await.unwrap();
    assert_eq!(store.expire(NOW + 61).await.unwrap(), 1);
    assert!(
        !store
            .commit(dead_id, &usage(key, NOW, 1.0, 200))
            .await
            .unwrap()
    );
    let later = Hold {
        now: NOW + 61,
        ..hold(key, 1.0, 2.0)
    };
    let again = store.reserve(&later).await.unwrap();
    assert!(again.is_some(), "the dead replica's credit came back");
    assert!(
        store
            .commit(live_id, &usage(key, NOW, 1.0, 200))
            .await
            .unwrap()
    );

    // A reservation also releases the key's own expired holds, without `expire`.
    store.release(again.unwrap()).await.unwrap();
    let stale = store.reserve(&dead).await.unwrap().unwrap();
    let after_lease = Hold {
        now: NOW + 120,
        expires_at: NOW + 180,
        ..hold(key, 1.0, 2.0)
    };
    assert!(store.reserve(&after_lease).await.unwrap().is_some());
    assert!(
        !store
            .commit(stale, &usage(key, NOW, 1.0, 200))
            .await
            .unwrap()
    );
}

contract!(sandbox_calls_are_capped_per_utc_day);
/// A hold with a daily cap (sandbox keys) counts the key's requests answered with an image
/// since the UTC day began plus those in flight; failed requests, holds given back and
/// yesterday's calls do not count, and a hold without a cap is never refused by it.
async fn sandbox_calls_are_capped_per_utc_day(store: Arc<dyn Store>) {
    let key = store
        .create_key(
            &NewKey {
                sandbox: true,
                ..NewKey::named("trial")
            },
            "h",
            NOW,
        )
        .await
        .unwrap()
        .id;
    let capped = |now: i64| Hold {
        now,
        expires_at: now + 60,
        daily_calls: Some(3),
        ..hold(key, 1.0, 1000.0)
    };
    // Yesterday's calls are yesterday's (NOW is 20:26 UTC; 21 hours before is the day before).
    let yesterday = NOW - 21 * 3600;
    for _ in 0..3 {
        let id = store.reserve(&capped(yesterday)).await.unwrap().unwrap();
        assert!(
            store
                .commit(id, &usage(key, yesterday, 0.0, 200))
                .await
                .unwrap()
        );
    }
    assert!(store.reserve(&capped(yesterday)).await.unwrap().is_none());

    // Today: three in flight fill the day; one more is refused.
    let held: Vec<i64> = futures_util::future::join_all(
        (0..3).map(|_| async { store.reserve(&capped(NOW)).await.unwrap().unwrap() }),
    )
    .await;
    assert!(store.reserve(&capped(NOW)).await.unwrap().is_none());
    // Two answered, one given back (its request failed, and is recorded as failed).
    for &id in &held[..2] {
        assert!(store.commit(id, &usage(key, NOW, 0.0, 200)).await.unwrap());
    }
    store.release(held[2]).await.unwrap();
    store.record(&usage(key, NOW, 0.0, 500)).await.unwrap();
    let third = store.reserve(&capped(NOW)).await.unwrap().unwrap();
    assert!(
        store
            .commit(third, &usage(key, NOW, 0.0, 200))
            .await
            .unwrap()
    );
    assert!(store.reserve(&capped(NOW)).await.unwrap().is_none());

    // Without a cap the same key is held (the monthly allowance still has room) and the
    // next UTC day starts from zero.
    let uncapped = Hold {
        daily_calls: None,
        ..capped(NOW)
    };
    let id = store.reserve(&uncapped).await.unwrap().unwrap();
    store.release(id).await.unwrap();
    let tomorrow = store::day_start(NOW) + 86_400;
    assert!(store.reserve(&capped(tomorrow)).await.unwrap().is_some());
}

contract!(rate_windows_are_shared_per_key_and_minute);
async fn rate_windows_are_shared_per_key_and_minute(store: Arc<dyn Store>) {
    let a = store
        .create_key(&NewKey::named("a"), "ha", NOW)
        .await
        .unwrap()
        .id;
    let b = store
        .create_key(&NewKey::named("b"), "hb", NOW)
        .await
        .unwrap()
        .id;
    let minute = NOW / 60;
    let take = |key, minute, cost| {
        let store = store.clone();
        async move { store.take_rate(key, minute, cost, 3).await.unwrap() }
    };
    assert_eq!(take(a, minute, 2).await, RateTake::Taken { used: 2 });
    assert_eq!(take(a, minute, 2).await, RateTake::Refused { used: 2 });
    assert_eq!(take(b, minute, 3).await, RateTake::Taken { used: 3 });
    assert_eq!(take(a, minute, 1).await, RateTake::Taken { used: 3 });
    assert_eq!(take(a, minute, 1).await, RateTake::Refused { used: 3 });
    assert_eq!(take(a, minute + 1, 3).await, RateTake::Taken { used: 3 });
    assert_eq!(take(a, minute + 2, 4).await, RateTake::Refused { used: 0 });

    // Parallel takers share one count: exactly the limit gets through.
    let takers: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_rate(b, minute + 5, 1, 7).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for taker in takers {
        taken += matches!(taker.await.unwrap(), RateTake::Taken { .. }) as usize;
    }
    assert_eq!(taken, 7);
}

contract!(usage_history_sums_per_day);
async fn usage_history_sums_per_day(store: Arc<dyn Store>) {
    let key = store
        .create_key(&NewKey::named("shop"), "h", NOW)
        .await
        .unwrap()
        .id;
    let day = NOW.div_euclid(86_400);
    let held = store
        .reserve(&hold(key, 0.25, 10.0))
        .await
        .unwrap()
        .unwrap();
    store
        .commit(held, &usage(key, day * 86_400 + 5, 0.25, 200))
        .await
        .unwrap();
    store
        .record(&usage(key, day * 86_400 + 9, 0.0, 400))
        .await
        .unwrap();
    let held = store.reserve(&hold(key, 1.0, 10.0)).await.unwrap().unwrap();
    store
        .commit(held, &usage(key, (day + 1) * 86_400 + 1, 1.0, 200))
        .await
        .unwrap();
    store
        .record(&usage(key, (day - 3) * 86_400, 0.0, 429))
        .await
        .unwrap();
    let days = store.usage_by_day(key, day * 86_400).await.unwrap();
    assert_eq!(days.len(), 2, "{days:?}");
    assert_eq!(
        (
            days[0].day,
            days[0].requests,
            days[0].images,
            days[0].millicredits,
            days[0].errors
        ),
        (day, 2, 1, 250, 1)
    );
    assert_eq!(
        (days[1].day, days[1].requests, days[1].millicredits),
        (day + 1, 1, 1000)
    );
}

#[tokio::test]
async fn bad_store_urls_and_files_are_refused_by_name() {
    for url in [
        "mysql://x",
        "sqlite://",
        "cutout.db",
        "postgres://host:notaport/db",
    ] {
        match store::open(url).await {
            Err(StoreError::InvalidUrl(given)) => assert_eq!(given, url),
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    // Not a SQLite file at all.
    let garbage = fresh_sqlite_path();
    std::fs::create_dir_all(garbage.parent().unwrap()).unwrap();
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    match store::open(&format!("sqlite://{}", garbage.display())).await {
        Err(StoreError::Foreign(..)) => {}
        other => panic!("expected Foreign, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x5a; 8192],
        "untouched"
    );

    // Another program's SQLite database.
    let foreign = fresh_sqlite_path();
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", foreign.display()))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE photos (id INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    match store::open(&format!("sqlite://{}", foreign.display())).await {
        Err(StoreError::Foreign(..)) => {}
        other => panic!("expected Foreign, got {other:?}"),
    }

    // A database that a newer cutout migrated.
    let newer = fresh_sqlite_path();
    let url = format!("sqlite://{}", newer.display());
    drop(store::open(&url).await.unwrap());
    {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (2, 'from the future', 1, x'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    match store::open(&url).await {
        Err(StoreError::NewerSchema(2)) => {}
        other => panic!("expected NewerSchema(2), got {other:?}"),
    }

    // Nothing listens on port 9 of loopback.
    match store::open("postgres://postgres@127.0.0.1:9/test").await {
        Err(e) => assert!(e.is_unavailable(), "{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn migrations_apply_once_and_data_survives_reopening() {
    let sqlite = format!("sqlite://{}", fresh_sqlite_path().display());
    for url in [sqlite, fresh_postgres().await] {
        let store = store::open(&url).await.unwrap();
        store
            .create_key(&NewKey::named("shop"), "h", NOW)
            .await
            .unwrap();
        drop(store);
        let reopened = store::open(&url).await.unwrap();
        assert!(reopened.key_by_hash("h").await.unwrap().is_some(), "{url}");
    }
}
