//! API keys, stored as SHA-256 hashes (one per line: `hash name live|sandbox`), and the
//! credits each key has used this calendar month (UTC), kept beside the keys in
//! `KEYS.usage` (one line per key: `YYYY-MM hash credits`) so a restart loses nothing.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub hash: String,
    pub name: String,
    pub sandbox: bool,
}

#[derive(Debug, Default)]
pub struct KeyStore {
    keys: Vec<Key>,
    usage: Mutex<Usage>,
    /// Where usage is saved; `None` keeps it in memory only.
    usage_path: Option<PathBuf>,
}

/// Credits used per key hash in one month, and credits held for requests in flight.
#[derive(Debug, Default)]
struct Usage {
    month: String,
    used: HashMap<String, f64>,
    /// Reserved by requests still rendering; not cleared when the month turns, since those
    /// requests are charged in the month they finish.
    held: HashMap<String, f64>,
}

impl Usage {
    fn unhold(&mut self, hash: &str, credits: f64) {
        if let Some(held) = self.held.get_mut(hash) {
            *held -= credits;
            if *held <= 0.0 {
                self.held.remove(hash);
            }
        }
    }

    /// Starts a fresh month when the calendar has moved on.
    fn roll_to(&mut self, month: &str) {
        if self.month != month {
            self.month = month.to_string();
            self.used.clear();
        }
    }
}

/// The current calendar month in UTC, `YYYY-MM`.
fn this_month() -> String {
    month_of_day((crate::limit::unix_now() / 86_400) as i64)
}

/// `YYYY-MM` of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
fn month_of_day(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}")
}

fn usage_path(keys: &Path) -> PathBuf {
    let mut name = keys.as_os_str().to_owned();
    name.push(".usage");
    PathBuf::from(name)
}

pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `$CUTOUT_KEYS`, else `~/.cutout/keys`.
pub fn default_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CUTOUT_KEYS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cutout").join("keys")
}

impl KeyStore {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let keys = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(Key {
                    hash: parts.next()?.to_string(),
                    name: parts.next()?.to_string(),
                    sandbox: parts.next() == Some("sandbox"),
                })
            })
            .collect();
        let usage_path = usage_path(path);
        let month = this_month();
        let saved = std::fs::read_to_string(&usage_path).unwrap_or_default();
        let used = saved
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let (line_month, hash) = (parts.next()?, parts.next()?);
                let credits: f64 = parts.next()?.parse().ok()?;
                (line_month == month).then(|| (hash.to_string(), credits))
            })
            .collect();
        Ok(Self {
            keys,
            usage: Mutex::new(Usage {
                month,
                used,
                held: HashMap::new(),
            }),
            usage_path: Some(usage_path),
        })
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// No keys configured: the server is open to anyone who can reach it.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn find(&self, presented: &str) -> Option<&Key> {
        let hashed = hash(presented);
        self.keys.iter().find(|k| k.hash == hashed)
    }

    /// Credits `hash` has used this month.
    pub fn used(&self, hash: &str) -> f64 {
        let mut usage = self.usage.lock().expect("usage lock");
        usage.roll_to(&this_month());
        usage.used.get(hash).copied().unwrap_or(0.0)
    }

    /// Adds `credits` to this month's use of `hash` and saves the usage file.
    pub fn charge(&self, hash: &str, credits: f64) {
        self.settle(hash, credits, 0.0);
    }

    /// Moves `held` of `hash`'s held credits and charges `credits`, in one step.
    fn settle(&self, hash: &str, credits: f64, held: f64) {
        // Also called while unwinding (a dropped reservation): a poisoned lock still holds
        // consistent counts, since no code panics between its updates.
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.unhold(hash, held);
        if credits == 0.0 {
            return;
        }
        usage.roll_to(&this_month());
        *usage.used.entry(hash.to_string()).or_default() += credits;
        if let Some(path) = &self.usage_path
            && let Err(e) = save_usage(path, &usage)
        {
            log::warn!("could not save key usage to {}: {e}", path.display());
        }
    }

    /// Holds `credits` of `hash`'s monthly `allowance` for one request, or `None` when what
    /// it used this month and what requests in flight hold leave less than that. Checking and
    /// holding are one step, so parallel requests can never spend a credit twice.
    pub fn reserve(&self, hash: &str, credits: f64, allowance: f64) -> Option<Reservation<'_>> {
        let mut usage = self.usage.lock().expect("usage lock");
        usage.roll_to(&this_month());
        let used = usage.used.get(hash).copied().unwrap_or(0.0);
        let held = usage.held.entry(hash.to_string()).or_default();
        if used + *held + credits > allowance {
            return None;
        }
        *held += credits;
        Some(Reservation {
            store: self,
            hash: Some(hash.to_string()),
            credits,
        })
    }
}

/// Credits held for one request: charged by [`Reservation::commit`] once its image is
/// ready, given back when dropped without it (an error, a client gone, a panic).
#[derive(Debug)]
pub struct Reservation<'a> {
    store: &'a KeyStore,
    /// `None` once committed.
    hash: Option<String>,
    credits: f64,
}

impl Reservation<'_> {
    pub fn commit(mut self) {
        if let Some(hash) = self.hash.take() {
            self.store.settle(&hash, self.credits, self.credits);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(hash) = &self.hash {
            self.store.settle(hash, 0.0, self.credits);
        }
    }
}

/// Writes the usage file whole (to a temporary name, then renamed over the old one).
fn save_usage(path: &Path, usage: &Usage) -> std::io::Result<()> {
    let text: String = usage
        .used
        .iter()
        .map(|(hash, credits)| format!("{} {hash} {credits}\n", usage.month))
        .collect();
    let temporary = path.with_extension("usage.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(temporary, path)
}

/// Creates a key, stores its hash in `path`, and returns the key (shown once).
pub fn create(path: &Path, name: &str, sandbox: bool) -> std::io::Result<String> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(std::io::Error::other("a key name must be one word"));
    }
    let store = KeyStore::load(path)?;
    if store.keys.iter().any(|k| k.name == name) {
        return Err(std::io::Error::other(format!(
            "a key named '{name}' exists"
        )));
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let key = if sandbox {
        format!("sandbox_{secret}")
    } else {
        secret
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    let kind = if sandbox { "sandbox" } else { "live" };
    text.push_str(&format!("{} {name} {kind}\n", hash(&key)));
    std::fs::write(path, text)?;
    Ok(key)
}

pub fn revoke(path: &Path, name: &str) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| line.split_whitespace().nth(1) != Some(name))
        .collect();
    let removed = kept.len() != text.lines().count();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_found() {
        let dir = std::env::temp_dir().join(format!("cutout-keys-{}", std::process::id()));
        let path = dir.join("keys");
        let key = create(&path, "shop", false).unwrap();
        let sandbox = create(&path, "test", true).unwrap();
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&key) && !stored.contains(&sandbox));
        let store = KeyStore::load(&path).unwrap();
        assert_eq!(store.find(&key).unwrap().name, "shop");
        assert!(store.find(&sandbox).unwrap().sandbox);
        assert!(store.find("wrong").is_none());
        assert!(revoke(&path, "shop").unwrap());
        assert!(KeyStore::load(&path).unwrap().find(&key).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reservations_hold_credits_until_committed_or_dropped() {
        let store = KeyStore::default();
        let first = store.reserve("k", 1.0, 2.0).expect("2 credits left");
        let second = store.reserve("k", 1.0, 2.0).expect("1 credit left");
        assert!(store.reserve("k", 0.25, 2.0).is_none(), "both credits held");
        drop(second);
        assert_eq!(store.used("k"), 0.0);
        first.commit();
        assert_eq!(store.used("k"), 1.0);
        let last = store
            .reserve("k", 1.0, 2.0)
            .expect("the dropped hold came back");
        assert!(store.reserve("k", 0.25, 2.0).is_none());
        last.commit();
        assert_eq!(store.used("k"), 2.0);
        assert!(store.reserve("other", 1.0, 2.0).is_some(), "per key");
    }

    #[test]
    fn months_from_days() {
        assert_eq!(month_of_day(0), "1970-01");
        assert_eq!(month_of_day(20778), "2026-11");
        assert_eq!(month_of_day(19782), "2024-02");
        assert_eq!(month_of_day(11017), "2000-03");
        assert_eq!(month_of_day(10956), "1999-12");
    }

    #[test]
    fn usage_survives_a_restart_within_the_month() {
        let dir = std::env::temp_dir().join(format!("cutout-usage-{}", std::process::id()));
        let path = dir.join("keys");
        let key = create(&path, "shop", false).unwrap();
        let hashed = hash(&key);
        // Last month's line is history, not this month's use.
        std::fs::write(usage_path(&path), format!("1999-12 {hashed} 500\n")).unwrap();
        let store = KeyStore::load(&path).unwrap();
        assert_eq!(store.used(&hashed), 0.0);
        store.charge(&hashed, 1.0);
        store.charge(&hashed, 0.25);
        let reloaded = KeyStore::load(&path).unwrap();
        assert_eq!(reloaded.used(&hashed), 1.25);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
