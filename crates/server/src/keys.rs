//! API keys, stored as SHA-256 hashes (one per line: `hash name live|sandbox`), and what
//! each key has used since the server started.

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
    used: Mutex<HashMap<String, f64>>,
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
        Ok(Self {
            keys,
            used: Mutex::default(),
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

    pub fn used(&self, hash: &str) -> f64 {
        self.used
            .lock()
            .expect("usage lock")
            .get(hash)
            .copied()
            .unwrap_or(0.0)
    }

    pub fn charge(&self, hash: &str, credits: f64) {
        *self
            .used
            .lock()
            .expect("usage lock")
            .entry(hash.to_string())
            .or_default() += credits;
    }
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
}
