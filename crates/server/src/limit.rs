//! Per-key rate limits as remove.bg documents them: a budget of "megapixel images" per clock
//! minute (an image costs its megapixels rounded up, at least 1; PhotoRoom counts images),
//! reported in `X-RateLimit-*` headers and enforced with 429 and `Retry-After`. The counts
//! live in the accounts store, so replicas share one limit.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The time in Unix seconds: the system clock in the server, a fixed one in tests, so that
/// no test depends on where in the minute it runs.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(unix_now)
}

/// What a key has left in the current minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the minute ends and the budget refills.
    pub reset: u64,
}

impl Budget {
    pub fn retry_after(&self, now: u64) -> u64 {
        self.reset.saturating_sub(now).max(1)
    }

    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset.to_string()),
        ]
    }
}

/// remove.bg's cost of an image: its megapixels rounded up, at least 1.
pub fn megapixel_images(width: u32, height: u32) -> u32 {
    (width as u64 * height as u64).div_ceil(1_000_000).max(1) as u32
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_costs() {
        assert_eq!(megapixel_images(625, 400), 1);
        assert_eq!(megapixel_images(1200, 800), 1);
        assert_eq!(megapixel_images(1600, 1200), 2);
        assert_eq!(megapixel_images(4000, 2500), 10);
        assert_eq!(megapixel_images(6250, 4000), 25);
    }
}
