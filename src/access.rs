//! Who may use eppmux. Whoever can send it a command acts as the registrar, so: plain-TCP
//! listeners stay on loopback unless explicitly allowed, local TLS clients can be limited to
//! certificates with known fingerprints, and failed logins are rate-limited per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `sha256:` followed by 64 lowercase hex digits: the SHA-256 of a certificate's DER encoding,
/// the same value `openssl x509 -noout -fingerprint -sha256` prints (without its colons).
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Accepts `sha256:HEX`, `HEX`, and OpenSSL's `AB:CD:…` form; returns the canonical form.
pub fn normalise_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .trim_start_matches("sha256 Fingerprint=")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// Counts failed logins per source address over a sliding minute.
pub struct LoginLimiter {
    max_per_minute: u32,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl LoginLimiter {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max_per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn with_map<T>(&self, f: impl FnOnce(&mut HashMap<IpAddr, (u32, Instant)>) -> T) -> T {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    /// True when `ip` has used up its failed logins for the current window.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.with_map(|map| match map.get(&ip) {
            Some((count, since)) if since.elapsed() < WINDOW => *count >= self.max_per_minute,
            _ => false,
        })
    }

    pub fn record_failure(&self, ip: IpAddr) {
        self.with_map(|map| {
            // Keep the map small: forget windows that are over.
            if map.len() > 10_000 {
                map.retain(|_, (_, since)| since.elapsed() < WINDOW);
            }
            let entry = map.entry(ip).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_in_every_common_spelling() {
        let fp = fingerprint(b"not really a certificate");
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);
        let hex = fp.trim_start_matches("sha256:");
        let openssl_style: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
            .collect();
        assert_eq!(
            normalise_fingerprint(&openssl_style.join(":")),
            Some(fp.clone())
        );
        assert_eq!(normalise_fingerprint(hex), Some(fp.clone()));
        assert_eq!(normalise_fingerprint(&fp), Some(fp));
        assert_eq!(normalise_fingerprint("sha256:abcd"), None);
    }

    #[test]
    fn failed_logins_are_limited_per_source() {
        let limiter = LoginLimiter::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!limiter.is_blocked(a));
        limiter.record_failure(a);
        assert!(!limiter.is_blocked(a));
        limiter.record_failure(a);
        assert!(limiter.is_blocked(a));
        assert!(!limiter.is_blocked(b), "another source is not affected");
    }
}
