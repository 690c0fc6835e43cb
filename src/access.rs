//! Who may use eppmux. Whoever can send it a command acts as the registrar, so: plain-TCP
//! listeners stay on loopback unless explicitly allowed, local TLS clients can be limited to
//! certificates with known fingerprints, and password guessing is slowed by [`LoginLimiter`]
//! without locking out the clients that know the password (SECURITY.md says why it works so).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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

/// Where a connection comes from, as far as limits care: one host is one source. Every loopback
/// address (127.0.0.0/8, ::1) is the same host, and an IPv6 host owns at least a /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Loopback,
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            ip if ip.is_loopback() => Source::Loopback,
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source::V6Prefix(prefix)
            }
        }
    }

    pub fn is_loopback(self) -> bool {
        self == Source::Loopback
    }
}

/// Failures counted over this window.
const WINDOW: Duration = Duration::from_secs(60);
/// The first delayed failure waits this long; each further one twice as long, up to [`MAX_DELAY`].
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);
/// While a key is hot, an attempt that would wait longer than this for its turn is refused.
const MAX_WAIT: Duration = Duration::from_secs(8);
/// Distinct failed passwords remembered per key (more count, but are not told apart).
const REMEMBERED: usize = 64;
/// Keys kept at most; idle ones are forgotten first.
const MAX_KEYS: usize = 10_000;
/// clIDs are at most 16 characters in EPP; a longer one sent by a client is cut for the key.
const CLID_KEY_LEN: usize = 64;

/// What [`LoginLimiter::admit`] decides for one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the password now.
    Now,
    /// The key is hot: check it at this instant, not before.
    At(Instant),
    /// The key is hot and its queue too long: refuse (2501) without checking.
    Refused,
}

/// Slows password guessing per (source, clID), without locking out clients that know the
/// password:
/// - failures are counted per key over a minute, each distinct wrong password once — a client
///   retrying one stale password (after a rotation, say) counts once, a guesser counts every
///   guess;
/// - past `free_failures` distinct failures, each failed attempt is answered after a delay that
///   doubles up to 4 s, and the key is *hot*: its attempts, right or wrong, go one at a time,
///   spaced by that delay, so a guesser gains nothing from parallel connections (a right answer
///   coming faster than a wrong one would tell). A right password then waits its turn (at most 8 s)
///   instead of being refused.
pub struct LoginLimiter {
    /// Changed by a reload.
    free_failures: AtomicU32,
    /// Keys the attempted passwords, so that they are told apart without being kept.
    hasher: ring::hmac::Key,
    keys: Mutex<HashMap<(Source, String), Entry>>,
}

#[derive(Default)]
struct Entry {
    /// Distinct failed passwords in the window, with when each last failed.
    failures: VecDeque<(Instant, [u8; 32])>,
    /// While hot: the next free turn.
    next_turn: Option<Instant>,
    last_seen: Option<Instant>,
}

impl Entry {
    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.failures.front() {
            if now.saturating_duration_since(*at) < WINDOW {
                break;
            }
            self.failures.pop_front();
        }
    }

    fn distinct(&self) -> u32 {
        self.failures.len() as u32
    }
}

impl LoginLimiter {
    pub fn new(free_failures: u32) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let hasher = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"eppmux"));
        Self {
            free_failures: AtomicU32::new(free_failures.max(1)),
            hasher,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// A reload's new limit; what was remembered of failures stays.
    pub fn set_failures_per_minute(&self, free_failures: u32) {
        self.free_failures
            .store(free_failures.max(1), Ordering::Relaxed);
    }

    fn free_failures(&self) -> u32 {
        self.free_failures.load(Ordering::Relaxed)
    }

    fn with_entry<T>(&self, ip: IpAddr, clid: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS {
            let now = Instant::now();
            keys.retain(|_, e| {
                e.last_seen
                    .is_some_and(|t| now.saturating_duration_since(t) < WINDOW)
            });
        }
        let clid: String = clid.chars().take(CLID_KEY_LEN).collect();
        f(keys.entry((Source::of(ip), clid)).or_default())
    }

    fn delay(&self, distinct: u32) -> Duration {
        if distinct < self.free_failures() {
            return Duration::ZERO;
        }
        let exp = (distinct - self.free_failures()).min(16);
        (BASE_DELAY * 2u32.pow(exp)).min(MAX_DELAY)
    }

    /// When a login attempt from `ip` for `clid` may be checked.
    pub fn admit(&self, ip: IpAddr, clid: &str, now: Instant) -> Admission {
        self.with_entry(ip, clid, |e| {
            e.last_seen = Some(now);
            e.forget_old(now);
            let distinct = e.distinct();
            if distinct < self.free_failures() {
                e.next_turn = None;
                return Admission::Now;
            }
            let turn = e.next_turn.map_or(now, |t| t.max(now));
            if turn.saturating_duration_since(now) > MAX_WAIT {
                return Admission::Refused;
            }
            e.next_turn = Some(turn + self.delay(distinct));
            if turn <= now {
                Admission::Now
            } else {
                Admission::At(turn)
            }
        })
    }

    /// A login failed with password `pw`; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, clid: &str, pw: &str, now: Instant) -> Duration {
        let tag = ring::hmac::sign(&self.hasher, pw.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(tag.as_ref());
        self.with_entry(ip, clid, |e| {
            e.last_seen = Some(now);
            e.forget_old(now);
            e.failures.retain(|(_, k)| *k != key);
            e.failures.push_back((now, key));
            if e.failures.len() > REMEMBERED {
                e.failures.pop_front();
            }
            self.delay(e.distinct())
        })
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
    fn one_host_is_one_source() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Source::of(ip("127.0.0.1")), Source::of(ip("127.0.0.2")));
        assert_eq!(Source::of(ip("127.0.0.1")), Source::of(ip("::1")));
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
        assert_ne!(Source::of(ip("192.0.2.1")), Source::of(ip("192.0.2.2")));
    }

    #[test]
    fn a_stale_password_retried_counts_once() {
        let limiter = LoginLimiter::new(3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..50 {
            let now = t0 + Duration::from_millis(i * 100);
            assert_eq!(limiter.admit(ip, "r1", now), Admission::Now);
            assert_eq!(
                limiter.failed(ip, "r1", "old-password", now),
                Duration::ZERO
            );
        }
        assert_eq!(
            limiter.admit(ip, "r1", t0 + Duration::from_secs(6)),
            Admission::Now
        );
    }

    #[test]
    fn guesses_are_delayed_and_then_taken_one_at_a_time() {
        let limiter = LoginLimiter::new(3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..2 {
            assert_eq!(limiter.admit(ip, "r1", t0), Admission::Now);
            assert_eq!(
                limiter.failed(ip, "r1", &format!("guess{i}"), t0),
                Duration::ZERO
            );
        }
        // From another loopback address: the same host, the same count.
        assert_eq!(limiter.failed(other, "r1", "guess2", t0), BASE_DELAY);
        // Hot now: three attempts at the same moment get successive turns.
        assert_eq!(limiter.admit(ip, "r1", t0), Admission::Now);
        assert_eq!(limiter.admit(ip, "r1", t0), Admission::At(t0 + BASE_DELAY));
        assert_eq!(
            limiter.admit(other, "r1", t0),
            Admission::At(t0 + BASE_DELAY * 2)
        );
        // Another clID from the same host, or another host, is not affected.
        assert_eq!(limiter.admit(ip, "r2", t0), Admission::Now);
        assert_eq!(
            limiter.admit("192.0.2.1".parse().unwrap(), "r1", t0),
            Admission::Now
        );
        // Delays double up to the cap; a queue longer than the wait limit is refused.
        let mut now = t0;
        for i in 3..12 {
            limiter.failed(ip, "r1", &format!("guess{i}"), now);
            now += Duration::from_millis(1);
        }
        assert_eq!(limiter.failed(ip, "r1", "guess12", now), MAX_DELAY);
        let refused = (0..10).any(|_| limiter.admit(ip, "r1", now) == Admission::Refused);
        assert!(refused, "a flood of attempts is cut off");
        // A minute later it is all forgotten.
        assert_eq!(limiter.admit(ip, "r1", now + WINDOW), Admission::Now);
    }
}
