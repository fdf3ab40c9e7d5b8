//! Fetching images by URL without becoming a proxy into the server's own network: http and
//! https only, a byte cap enforced while reading, timeouts, few redirects, and addresses
//! checked after DNS resolution by the resolver the connection itself uses (so a second,
//! rebinding lookup never happens). Each redirect is resolved and checked again.

use std::net::IpAddr;
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub max_bytes: u64,
    pub allow_private: bool,
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_redirects: u32,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            max_bytes: 30 * 1024 * 1024,
            allow_private: false,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_redirects: 3,
        }
    }
}

#[derive(Debug)]
pub enum FetchError {
    /// Not an http(s) URL, or an address that may not be fetched.
    Refused(String),
    /// Larger than the cap.
    TooLarge(u64),
    /// Could not be downloaded.
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) => write!(f, "{why}"),
            Self::TooLarge(limit) => write!(f, "the file is larger than {limit} bytes"),
            Self::Failed(why) => write!(f, "download failed: {why}"),
        }
    }
}

#[derive(Debug)]
struct CheckedResolver {
    allow_private: bool,
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        if !self.allow_private
            && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
        {
            return Err(ureq::Error::Other(
                format!(
                    "{} resolves to a non-public address ({})",
                    uri.host().unwrap_or(""),
                    bad.ip()
                )
                .into(),
            ));
        }
        Ok(addrs)
    }
}

/// Blocking: run it on a blocking thread.
pub fn fetch(url: &str, policy: &FetchPolicy) -> Result<Vec<u8>, FetchError> {
    let uri = check_url(url)?;
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_connect(Some(policy.connect_timeout))
        .timeout_global(Some(policy.total_timeout))
        .max_redirects(policy.max_redirects)
        .http_status_as_error(true)
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        CheckedResolver {
            allow_private: policy.allow_private,
        },
    );
    let mut response = agent.get(uri).call().map_err(|e| match e {
        ureq::Error::Other(why) => FetchError::Refused(why.to_string()),
        other => FetchError::Failed(other.to_string()),
    })?;
    let declared = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > policy.max_bytes) {
        return Err(FetchError::TooLarge(policy.max_bytes));
    }
    response
        .body_mut()
        .with_config()
        .limit(policy.max_bytes)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(policy.max_bytes),
            other => FetchError::Failed(other.to_string()),
        })
}

/// The checks made before any connection: a valid absolute http(s) URL with a host.
/// Addresses are checked later, after resolution.
pub fn check_url(url: &str) -> Result<ureq::http::Uri, FetchError> {
    let parsed: ureq::http::Uri = url
        .parse()
        .map_err(|_| FetchError::Refused(format!("'{url}' is not a valid URL")))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(FetchError::Refused(
                "only http and https URLs can be fetched".into(),
            ));
        }
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(FetchError::Refused(format!("'{url}' names no host")));
    }
    Ok(parsed)
}

/// Whether `ip` may be fetched: not loopback, private, link-local (cloud metadata lives
/// there), shared, multicast, documentation, benchmarking or otherwise reserved — every
/// block of IANA's IPv4 and IPv6 special-purpose registries not marked globally reachable,
/// plus multicast. Addresses that embed an IPv4 address (IPv4-mapped, NAT64) are judged by
/// it; deprecated and tunnelling ranges (IPv4-compatible, 6to4, site-local) are refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 88 && c == 99)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded_v4 = || {
                let [.., hi, lo] = s;
                IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32))
            };
            if v6.to_ipv4_mapped().is_some() || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) {
                return is_public(embedded_v4());
            }
            !(s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible
                || (s[0] == 0x0064 && s[1] == 0xff9b) // the rest of NAT64's /32, local-use
                || s[..4] == [0x0100, 0, 0, 0] // discard-only
                || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (/23)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[0] == 0x2002 // 6to4
                || (s[0] == 0x3fff && s[1] < 0x1000) // documentation (3fff::/20)
                || s[0] == 0x5f00 // segment routing
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] & 0xff00) == 0xff00) // multicast
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_http_schemes() {
        let policy = FetchPolicy::default();
        assert!(matches!(
            fetch("file:///etc/passwd", &policy),
            Err(FetchError::Refused(_))
        ));
        assert!(matches!(
            fetch("ftp://example.com/a.jpg", &policy),
            Err(FetchError::Refused(_))
        ));
    }

    #[test]
    fn loopback_is_refused_after_resolution() {
        let policy = FetchPolicy::default();
        let err = fetch("http://localhost:9/a.jpg", &policy).unwrap_err();
        assert!(matches!(err, FetchError::Refused(_)), "{err}");
    }
}
