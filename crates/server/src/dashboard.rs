//! `/dashboard`: a read-only page for admins. The page is static (no data in it); it reads
//! `/dashboard/data`, which needs an admin key: per-key credits and daily usage from the
//! accounts store, and the server's own counts since it started from the metrics.

use serde::Serialize;
use serde_json::json;

use crate::State;
use crate::accounts::Accounts;
use crate::api::store_failure;
use crate::respond::{Failure, Reply, json_reply};
use crate::store::{self, Key};

/// Days of usage history each key's chart shows.
const DAYS: i64 = 30;

#[derive(Serialize)]
struct KeyUsage {
    name: String,
    plan: &'static str,
    sandbox: bool,
    admin: bool,
    /// Credits: the monthly allowance, used this month, pay-as-you-go left, available now.
    allowance: f64,
    used: f64,
    payg: f64,
    available: f64,
    last_used_at: Option<i64>,
    /// Days since 1970-01-01 (UTC) with requests, images, errors and credits.
    days: Vec<Day>,
}

#[derive(Serialize)]
struct Day {
    day: i64,
    requests: i64,
    images: i64,
    errors: i64,
    credits: f64,
}

pub async fn data(state: &State) -> Result<Reply, Failure> {
    let overview = state.metrics.overview(state.queue.in_flight());
    let mut keys = Vec::new();
    let mut today = None;
    if let Some(accounts) = &state.accounts {
        let now = accounts.now();
        today = Some(now.div_euclid(86_400));
        let since = (now.div_euclid(86_400) - (DAYS - 1)) * 86_400;
        let store = accounts.store();
        for key in store.keys().await.map_err(store_failure)? {
            keys.push(key_usage(accounts, &key, since).await?);
        }
    }
    Ok(json_reply(
        hyper::StatusCode::OK,
        json!({
            "model": state.model.name,
            "accounts": state.accounts.is_some(),
            "today": today,
            "server": overview,
            "memory": {
                "budget_bytes": state.memory.bytes(),
                "in_flight_bytes": state.memory.in_flight(),
            },
            "keys": keys,
        }),
    ))
}

async fn key_usage(accounts: &Accounts, key: &Key, since: i64) -> Result<KeyUsage, Failure> {
    let balance = accounts.balance(key).await.map_err(store_failure)?;
    let days = accounts
        .store()
        .usage_by_day(key.id, since)
        .await
        .map_err(store_failure)?;
    Ok(KeyUsage {
        name: key.name.clone(),
        plan: key.plan.as_str(),
        sandbox: key.sandbox,
        admin: key.admin,
        allowance: store::credits(balance.allowance),
        used: store::credits(balance.subscription_used),
        payg: store::credits(balance.payg),
        available: store::credits(balance.available()),
        last_used_at: key.last_used_at,
        days: days
            .into_iter()
            .map(|d| Day {
                day: d.day,
                requests: d.requests,
                images: d.images,
                errors: d.errors,
                credits: store::credits(d.millicredits),
            })
            .collect(),
    })
}
