//! API keys: random secrets shown once, stored only as SHA-256 hashes (a key carries 192
//! random bits, so a fast hash is enough), and the flat `KEYS` file of earlier versions,
//! read once by `cutout keys import`.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two hashes in time that depends only on their lengths.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}

/// A new key: 192 random bits in hex, prefixed `sandbox_` for sandbox keys (as PhotoRoom's).
pub fn generate(sandbox: bool) -> String {
    let secret: String = random_bytes::<24>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sandbox {
        format!("sandbox_{secret}")
    } else {
        secret
    }
}

/// A key of the flat file: `hash name live|sandbox` per line, with the credits it used in
/// `month` from `KEYS.usage` (`YYYY-MM hash credits` per line).
#[derive(Debug, Clone, PartialEq)]
pub struct FlatKey {
    pub hash: String,
    pub name: String,
    pub sandbox: bool,
    pub used_this_month: f64,
}

/// Reads the flat `KEYS` file and the `month` lines of its `KEYS.usage`.
pub fn read_flat(path: &Path, month: &str) -> std::io::Result<Vec<FlatKey>> {
    let text = std::fs::read_to_string(path)?;
    let mut usage_path = path.as_os_str().to_owned();
    usage_path.push(".usage");
    let usage = match std::fs::read_to_string(&usage_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let used = |hash: &str| -> f64 {
        usage
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let (line_month, line_hash) = (parts.next()?, parts.next()?);
                let credits: f64 = parts.next()?.parse().ok()?;
                (line_month == month && line_hash == hash).then_some(credits)
            })
            .sum()
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(name)) = (parts.next(), parts.next()) else {
                return Err(std::io::Error::other(format!(
                    "{}: not a key line: '{line}'",
                    path.display()
                )));
            };
            Ok(FlatKey {
                hash: hash.to_string(),
                name: name.to_string(),
                sandbox: parts.next() == Some("sandbox"),
                used_this_month: used(hash),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashes_compare() {
        let (a, b) = (generate(false), generate(true));
        assert_eq!(a.len(), 48);
        assert!(b.starts_with("sandbox_") && b.len() == 56);
        assert_ne!(a, generate(false));
        // sha256("abc"), the FIPS 180-2 example.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same_hash(&hash(&a), &hash(&a)));
        assert!(!same_hash(&hash(&a), &hash(&b)));
        assert!(!same_hash("ab", "abc"));
    }

    #[test]
    fn flat_files_are_read_with_this_months_usage() {
        let dir = std::env::temp_dir().join(format!("cutout-flat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "h1 shop live\nh2 test sandbox\n\n").unwrap();
        std::fs::write(
            dir.join("keys.usage"),
            "2026-11 h1 3.25\n2026-10 h1 100\n2026-11 h2 1\n",
        )
        .unwrap();
        let keys = read_flat(&path, "2026-11").unwrap();
        assert_eq!(
            keys,
            [
                FlatKey {
                    hash: "h1".into(),
                    name: "shop".into(),
                    sandbox: false,
                    used_this_month: 3.25
                },
                FlatKey {
                    hash: "h2".into(),
                    name: "test".into(),
                    sandbox: true,
                    used_this_month: 1.0
                },
            ]
        );
        std::fs::write(&path, "onlyhash\n").unwrap();
        assert!(read_flat(&path, "2026-11").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
