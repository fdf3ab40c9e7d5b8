//! What the HTTP and store tests share: a fresh database on the test PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `CUTOUT_TEST_DATABASE_URL`, else the default that `cargo xtask test` provides.
pub fn postgres_url() -> String {
    std::env::var("CUTOUT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database of its own on the test PostgreSQL (named after `prefix`, this process and a
/// counter), dropped by nobody: the cluster is throwaway.
pub async fn fresh_postgres(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url = postgres_url();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "no PostgreSQL at {url} ({e}): run `cargo xtask test`, which starts one, or set \
             CUTOUT_TEST_DATABASE_URL"
        )
    });
    // A leftover of an earlier run with the same process id goes first.
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    let (base, _) = url.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{name}")
}
