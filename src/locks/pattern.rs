// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Locks that cover more than one identity, a whole domain (`@example.com`)
//! or a client network (`203.0.113.0/24`), and the filters of the bulk
//! operations (unlock everyone a rule locked in the last hour).
//!
//! The per-message lookup stays O(1)-ish: the exact map first, then the
//! identity's domain in a map of domain locks, then a short list of networks
//! (a lock list holds a handful; each check is two integer compares).

use super::file::{LockEntry, LockSource, Timestamp};
use crate::config::IdentityConfig;
use crate::config::address::{domain_key, normalise_address, normalise_local_identity};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// What a lock list identity names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One identity, compared exactly.
    Identity,
    /// Every address of a domain: `@example.com` (the domain, lowercase).
    Domain(String),
    /// Every client in a network: `203.0.113.0/24`.
    Network(IpNet),
}

impl Target {
    /// Classifies a normalised lock list identity.
    pub fn of(identity: &str) -> Target {
        if let Some(domain) = identity.strip_prefix('@')
            && !domain.is_empty()
            && !domain.contains('@')
        {
            return Target::Domain(domain.trim_end_matches('.').to_ascii_lowercase());
        }
        if identity.contains('/')
            && let Ok(net) = identity.parse::<IpNet>()
        {
            return Target::Network(net.trunc());
        }
        Target::Identity
    }
}

/// An identity, `@domain` or network as an admin typed it, in the form the
/// lock list keeps: a normalised address or login, `@example.com`, a
/// client address, a network with its host bits cleared, or a local Unix
/// user (`local:www-data`) or its script (`php:www-data:form.php`), kept
/// exactly as the local-submission sources yield them.
pub fn normalise_target(config: &IdentityConfig, raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    // Quoted as Rust quotes a string: a control character in what was
    // typed (or written into the lock list) is shown escaped, never
    // written raw into a log line or a terminal.
    // First: a script's name may hold a '/' or an '@' that would read as a
    // network or an address.
    if let Some(local) = normalise_local_identity(raw) {
        return local.map_err(|e| format!("{raw:?} is not a valid identity: {e}"));
    }
    if let Some(domain) = raw.strip_prefix('@') {
        let d = domain_key(domain);
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || c == '.'
                    || !c.is_ascii() && !c.is_control() && !c.is_whitespace()
            });
        return if valid {
            Ok(format!("@{d}"))
        } else {
            Err(format!(
                "{raw:?} is not a domain lock: write @ and a domain, e.g. @example.com"
            ))
        };
    }
    if looks_like_network(raw) {
        return raw
            .parse::<IpNet>()
            .map(|n| n.trunc().to_string())
            .map_err(|_| format!("{raw:?} is not a network: write e.g. 203.0.113.0/24 or 2001:db8::/48"));
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    normalise_address(config, raw.as_bytes()).map_err(|e| format!("{raw:?} is not a valid identity: {e}"))
}

/// Whether `raw` is written as a network (`203.0.113.0/24`, a typo such as
/// `10.0.0/24` included): digits, dots and colons, then a '/'. A login
/// with a '/' (`dept/alice`), which the daemon may resolve and lock, is an
/// identity like any other.
fn looks_like_network(raw: &str) -> bool {
    !raw.contains('@')
        && raw.split_once('/').is_some_and(|(addr, _)| {
            addr.contains(['.', ':']) && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
        })
}

/// The domain and network locks of a list, for the per-message lookup.
#[derive(Debug, Default)]
pub struct Patterns {
    domains: HashMap<String, Arc<LockEntry>>,
    networks: Vec<(IpNet, Arc<LockEntry>)>,
}

impl Patterns {
    /// Collects the pattern locks among `entries`.
    pub fn new<'a>(entries: impl Iterator<Item = &'a Arc<LockEntry>>) -> Self {
        let mut p = Patterns::default();
        for e in entries {
            match Target::of(&e.identity) {
                Target::Identity => {}
                Target::Domain(d) => {
                    p.domains.insert(d, e.clone());
                }
                Target::Network(n) => p.networks.push((n, e.clone())),
            }
        }
        // Most specific network first, so the lock shown is the closest one.
        p.networks.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        p
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.networks.is_empty()
    }

    /// The lock in force for the domain of `identity` (an address), if any.
    pub fn domain_lock(&self, identity: &str, now: SystemTime) -> Option<Arc<LockEntry>> {
        if self.domains.is_empty() {
            return None;
        }
        let (_, domain) = identity.rsplit_once('@')?;
        self.domains.get(domain).filter(|e| e.is_active(now)).cloned()
    }

    /// The lock in force for a client address, if a network lock covers it.
    pub fn network_lock(&self, ip: IpAddr, now: SystemTime) -> Option<Arc<LockEntry>> {
        // An IPv4 client reported as ::ffff:a.b.c.d is the IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.networks
            .iter()
            .find(|(n, e)| n.contains(&ip) && e.is_active(now))
            .map(|(_, e)| e.clone())
    }

    /// Network locks only (the lookup of a client address as identity).
    pub fn has_networks(&self) -> bool {
        !self.networks.is_empty()
    }
}

/// Which locks a bulk operation acts on; every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub source: Option<LockSource>,
    pub rule: Option<String>,
    /// Locked at or after this time.
    pub since: Option<Timestamp>,
    /// A glob over the identity: `*` any run of characters, `?` one.
    pub identity: Option<String>,
    /// Only locks in force (the default for unlocking), or also lapsed ones.
    pub include_expired: bool,
}

impl Filter {
    /// Whether the filter names at least one condition: a bulk unlock with
    /// none would release everyone, which must be asked for explicitly.
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.rule.is_none() && self.since.is_none() && self.identity.is_none()
    }

    pub fn matches(&self, e: &LockEntry, now: SystemTime) -> bool {
        (self.include_expired || e.is_active(now))
            && self.source.is_none_or(|s| e.source == s)
            && self.rule.as_ref().is_none_or(|r| e.rule.as_deref() == Some(r.as_str()))
            && self.since.is_none_or(|t| e.locked_at >= t)
            && self.identity.as_ref().is_none_or(|g| glob(g, &e.identity))
    }
}

/// Matches `text` against a glob of `*` and `?` (case-insensitive, as
/// identities are lowercase). Linear in time and memory: no backtracking
/// blow-up whatever the pattern.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(id: &str) -> Arc<LockEntry> {
        Arc::new(LockEntry {
            identity: id.into(),
            source: LockSource::Manual,
            locked_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            reason: "test".into(),
            rule: None,
            previous_locks: 0,
            expires_at: None,
            note: None,
            history: Vec::new(),
        })
    }

    #[test]
    fn targets() {
        assert_eq!(Target::of("alice@example.com"), Target::Identity);
        assert_eq!(Target::of("@Example.COM."), Target::Domain("example.com".into()));
        assert_eq!(Target::of("@"), Target::Identity);
        assert_eq!(
            Target::of("203.0.113.7/24"),
            Target::Network("203.0.113.0/24".parse().unwrap())
        );
        assert_eq!(
            Target::of("2001:db8::/32"),
            Target::Network("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(Target::of("203.0.113.7"), Target::Identity);
        assert_eq!(Target::of("a/b@example.com"), Target::Identity);
    }

    #[test]
    fn domain_and_network_locks_match() {
        let entries = [entry("@example.com"), entry("203.0.113.0/24"), entry("bob@x.org")];
        let p = Patterns::new(entries.iter());
        let now = SystemTime::now();
        assert!(p.domain_lock("alice@example.com", now).is_some());
        assert!(p.domain_lock("alice@sub.example.com", now).is_none());
        assert!(p.domain_lock("alice@example.org", now).is_none());
        assert!(p.domain_lock("example.com", now).is_none());
        assert!(p.network_lock("203.0.113.200".parse().unwrap(), now).is_some());
        assert!(p.network_lock("::ffff:203.0.113.9".parse().unwrap(), now).is_some());
        assert!(p.network_lock("203.0.114.1".parse().unwrap(), now).is_none());
    }

    #[test]
    fn targets_are_normalised() {
        let c = IdentityConfig::default();
        assert_eq!(
            normalise_target(&c, " <Alice@Example.COM> ").unwrap(),
            "alice@example.com"
        );
        assert_eq!(normalise_target(&c, "@Example.COM").unwrap(), "@example.com");
        assert_eq!(normalise_target(&c, "203.0.113.9/24").unwrap(), "203.0.113.0/24");
        assert_eq!(normalise_target(&c, "192.0.2.1").unwrap(), "192.0.2.1");
        assert!(normalise_target(&c, "@").is_err());
        assert!(normalise_target(&c, "@a b").is_err());
        assert!(normalise_target(&c, "10.0.0.0/33").is_err());
        // A local user and a script: exact, one identity each.
        assert_eq!(normalise_target(&c, " local:www-data ").unwrap(), "local:www-data");
        assert_eq!(
            normalise_target(&c, "php:www-data:Contact Form.php").unwrap(),
            "php:www-data:Contact Form.php"
        );
        assert_eq!(Target::of("local:www-data"), Target::Identity);
        assert!(normalise_target(&c, "local:").is_err());
        // A login with a '/' is a login; a network typo is refused.
        assert_eq!(normalise_target(&c, "Dept/Alice").unwrap(), "dept/alice");
        assert!(
            normalise_target(&c, "10.0.0/24")
                .unwrap_err()
                .contains("is not a network")
        );
        assert!(normalise_target(&c, "2001:db8::/129").is_err());
        // What was typed is quoted with its control characters escaped.
        assert_eq!(
            normalise_target(&c, "a\nERROR forged@example.com").unwrap_err(),
            "\"a\\nERROR forged@example.com\" is not a valid identity: malformed (spaces, control characters or stray '@')"
        );
        assert!(normalise_target(&c, "@exa\u{85}mple.com").is_err());
        assert_eq!(normalise_target(&c, "@Bücher.example").unwrap(), "@bücher.example");
    }

    #[test]
    fn globs() {
        assert!(glob("*@example.com", "alice@example.com"));
        assert!(glob("a?ice@*", "alice@x"));
        assert!(glob("*", ""));
        assert!(!glob("*@example.com", "alice@example.org"));
        assert!(glob("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!glob("*a*b*c*d", "xxaxxbxxcxx"));
        // A hostile pattern stays linear.
        let long = "a".repeat(5000);
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[test]
    fn filters() {
        let mut e = (*entry("alice@example.com")).clone();
        e.source = LockSource::Auto;
        e.rule = Some("per-hour".into());
        let now = SystemTime::now();
        let f = Filter {
            rule: Some("per-hour".into()),
            ..Filter::default()
        };
        assert!(f.matches(&e, now));
        let f = Filter {
            source: Some(LockSource::Manual),
            ..Filter::default()
        };
        assert!(!f.matches(&e, now));
        let f = Filter {
            since: Some(Timestamp(e.locked_at.0 + Duration::from_secs(1))),
            ..Filter::default()
        };
        assert!(!f.matches(&e, now));
        let f = Filter {
            identity: Some("*@example.com".into()),
            ..Filter::default()
        };
        assert!(f.matches(&e, now));
        e.expires_at = Some(Timestamp(now));
        assert!(!f.matches(&e, now), "a lapsed lock is not unlocked again");
        assert!(Filter::default().is_empty());
    }
}
