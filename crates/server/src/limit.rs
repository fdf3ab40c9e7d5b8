//! Per-key rate limits as remove.bg documents them: a budget of "megapixel images" per clock
//! minute (an image costs its megapixels rounded up, at least 1; PhotoRoom counts images),
//! reported in `X-RateLimit-*` headers and enforced with 429 and `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// A fixed window per clock minute and key.
pub struct RateLimiter {
    per_minute: u32,
    used: Mutex<HashMap<String, (u64, u32)>>,
    clock: Clock,
}

impl RateLimiter {
    pub fn new(per_minute: u32, clock: Clock) -> Self {
        Self {
            per_minute,
            used: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Unix seconds by the limiter's clock.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Takes `cost` units from `key`'s minute, or says when it refills (`Err`).
    pub fn take(&self, key: &str, cost: u32) -> Result<Budget, Budget> {
        self.take_at(key, cost, self.now())
    }

    fn take_at(&self, key: &str, cost: u32, now: u64) -> Result<Budget, Budget> {
        let minute = now / 60;
        let mut used = self.used.lock().expect("rate limiter lock");
        used.retain(|_, (m, _)| *m == minute);
        let (_, spent) = used.entry(key.to_string()).or_insert((minute, 0));
        let budget = |spent: u32| Budget {
            limit: self.per_minute,
            remaining: self.per_minute.saturating_sub(spent),
            reset: (minute + 1) * 60,
        };
        if *spent + cost > self.per_minute {
            return Err(budget(*spent));
        }
        *spent += cost;
        Ok(budget(*spent))
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

    #[test]
    fn budget_refills_each_minute_per_key() {
        let limiter = RateLimiter::new(3, system_clock());
        let t = 1_700_000_080; // 40 s into a minute
        assert_eq!(limiter.take_at("a", 2, t).unwrap().remaining, 1);
        assert_eq!(limiter.take_at("b", 3, t).unwrap().remaining, 0);
        let refused = limiter.take_at("a", 2, t + 5).unwrap_err();
        assert_eq!(refused.remaining, 1);
        assert_eq!(refused.retry_after(t + 5), 15);
        assert_eq!(limiter.take_at("a", 1, t + 5).unwrap().remaining, 0);
        assert_eq!(limiter.take_at("a", 3, t + 20).unwrap().remaining, 0);
    }
}
