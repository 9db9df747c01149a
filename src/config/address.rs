// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The normal form of an address or login as `[identity]` writes it, and
//! the lock key of an identity: the one definition that identity
//! resolution, override and lock-list matching, the status API and
//! `queue hold` all use, so that they can never disagree on who is who.

use super::IdentityConfig;
use std::fmt;

/// Why a source's value was not believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    NotUtf8,
    Empty,
    TooLong(usize),
    Malformed,
    /// Begins with `local:` or `php:`, which only the local-submission
    /// sources may yield: no login, header or envelope sender can be
    /// counted (or locked) as a local Unix user.
    Reserved,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotUtf8 => f.write_str("not UTF-8"),
            Invalid::Empty => f.write_str("empty"),
            Invalid::TooLong(n) => write!(f, "too long ({n} bytes)"),
            Invalid::Malformed => f.write_str("malformed (spaces, control characters or stray '@')"),
            Invalid::Reserved => write!(
                f,
                "reserved (\"{LOCAL_USER_PREFIX}\" and \"{PHP_SCRIPT_PREFIX}\" name local Unix users and their scripts)"
            ),
        }
    }
}

/// How the identity of a local Unix user begins: `local:www-data`, or
/// `local:1042` for a uid with no name.
pub const LOCAL_USER_PREFIX: &str = "local:";
/// How the identity of a PHP script of a local user begins:
/// `php:www-data:contact.php`.
pub const PHP_SCRIPT_PREFIX: &str = "php:";

/// The identity of every message no source could identify: they share one
/// set of counters (and one lock list entry), whatever the realms.
pub const UNIDENTIFIED: &str = "unknown";

/// Whether a (normalised) identity is a local user's or its script's.
pub fn is_local_identity(identity: &str) -> bool {
    identity.starts_with(LOCAL_USER_PREFIX) || identity.starts_with(PHP_SCRIPT_PREFIX)
}

/// The normal form of a local user's or script's identity as typed (in the
/// lock list, an override, the CLI): the prefix lowercased, the rest kept
/// exactly, since Unix user names and file names are case-sensitive and a
/// script's name may hold spaces or a `+`. `None` if `raw` has neither
/// prefix; an error if what follows it is empty or has control characters.
pub fn normalise_local_identity(raw: &str) -> Option<Result<String, Invalid>> {
    let raw = raw.trim();
    let prefix = [LOCAL_USER_PREFIX, PHP_SCRIPT_PREFIX]
        .into_iter()
        .find(|p| raw.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))?;
    let rest = &raw[prefix.len()..];
    Some(if rest.is_empty() {
        Err(Invalid::Empty)
    } else if rest.chars().any(char::is_control) {
        Err(Invalid::Malformed)
    } else {
        Ok(format!("{prefix}{rest}"))
    })
}

/// Normalises a login or address: trim, strip `<>`, lowercase the domain
/// (and the local part unless configured otherwise), fold `+tag`, bound the length.
pub fn normalise_address(config: &IdentityConfig, raw: &[u8]) -> Result<String, Invalid> {
    let raw = std::str::from_utf8(raw).map_err(|_| Invalid::NotUtf8)?;
    let mut s = raw.trim();
    if let Some(inner) = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        s = inner.trim();
    }
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > config.max_length {
        return Err(Invalid::TooLong(s.len()));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(Invalid::Malformed);
    }
    let (local, domain) = match s.rsplit_once('@') {
        Some((local, domain)) => {
            if local.is_empty() || domain.is_empty() || domain.contains('@') {
                return Err(Invalid::Malformed);
            }
            (local, Some(domain))
        }
        None => (s, None),
    };
    let local = if config.fold_subaddress {
        match local.split_once(config.subaddress_separator) {
            Some((base, _)) if !base.is_empty() => base,
            _ => local,
        }
    } else {
        local
    };
    let mut out = String::with_capacity(s.len());
    if config.lowercase_local_part {
        out.push_str(&local.to_lowercase());
    } else {
        out.push_str(local);
    }
    let domain = domain.map(|d| d.trim_end_matches('.').to_lowercase());
    let domain = match domain {
        // One account, one identity: a login (or address) in one of the
        // site's own realms is the account in its default realm, or bare.
        Some(d) if config.is_local_realm(&d) => config.default_realm.clone(),
        None if config.default_realm.is_some() && s != UNIDENTIFIED && !is_client_address(s) => {
            config.default_realm.clone()
        }
        other => other,
    };
    if let Some(domain) = domain {
        out.push('@');
        out.push_str(&domain);
    }
    Ok(out)
}

/// Whether a bare value is a client address or network (the
/// `client-address` source's identity, or a network lock), which no realm
/// qualifies.
fn is_client_address(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

/// The key under which an identity is counted, locked and looked up: its
/// normal form or, for a value that is not a valid address or login (a
/// client network written in the lock list, say), the value trimmed and
/// lowercased. Full Unicode lowercasing, as [`normalise_address`] does, so a
/// non-ASCII identity gets one key everywhere.
///
/// A local user's or script's identity (`local:…`, `php:…`) keeps its case
/// and everything after the prefix (see [`normalise_local_identity`]), so
/// that the key is the very value the local-submission sources yield.
pub fn lock_key(config: &IdentityConfig, raw: &str) -> String {
    if let Some(Ok(local)) = normalise_local_identity(raw) {
        return local;
    }
    normalise_address(config, raw.as_bytes()).unwrap_or_else(|_| raw.trim().to_lowercase())
}

/// A domain as overrides and the lock list compare it.
pub fn domain_key(raw: &str) -> String {
    raw.trim().trim_end_matches('.').to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let c = IdentityConfig::default();
        assert_eq!(
            normalise_address(&c, b"  <Alice@Example.COM>  ").unwrap(),
            "alice@example.com"
        );
        assert_eq!(normalise_address(&c, b"Bob").unwrap(), "bob");
        assert_eq!(
            normalise_address(&c, b"carol@example.com.").unwrap(),
            "carol@example.com"
        );
        assert_eq!(normalise_address(&c, b"<>"), Err(Invalid::Empty));
        assert_eq!(normalise_address(&c, b"a b@example.com"), Err(Invalid::Malformed));
        assert_eq!(normalise_address(&c, b"@example.com"), Err(Invalid::Malformed));
        assert_eq!(normalise_address(&c, b"a@"), Err(Invalid::Malformed));
        assert_eq!(normalise_address(&c, b"a\x01@example.com"), Err(Invalid::Malformed));
        assert_eq!(normalise_address(&c, b"\xff\xfe@example.com"), Err(Invalid::NotUtf8));
        let long = format!("{}@example.com", "x".repeat(300));
        assert_eq!(normalise_address(&c, long.as_bytes()), Err(Invalid::TooLong(312)));
        // Keep the local part's case if asked; fold +tags if asked.
        let keep = IdentityConfig {
            lowercase_local_part: false,
            fold_subaddress: true,
            ..IdentityConfig::default()
        };
        assert_eq!(
            normalise_address(&keep, b"Alice+News@EXAMPLE.com").unwrap(),
            "Alice@example.com"
        );
        assert_eq!(normalise_address(&keep, b"+x@example.com").unwrap(), "+x@example.com");
    }

    #[test]
    fn every_spelling_of_a_login_is_one_identity() {
        // Cyrus with smtpd_sasl_local_domain, Dovecot with
        // auth_default_realm: "alice", "alice@example.com" and the host's
        // realm all log in to one account.
        let qualified = IdentityConfig {
            local_realms: vec!["mail.example.com".into()],
            default_realm: Some("example.com".into()),
            ..IdentityConfig::default()
        };
        for spelling in [
            "alice",
            "ALICE",
            "alice@example.com",
            "Alice@Example.COM.",
            "alice@mail.example.com",
            "<alice@MAIL.example.com>",
        ] {
            assert_eq!(lock_key(&qualified, spelling), "alice@example.com", "{spelling}");
        }
        // Another domain stays itself; client addresses and networks get
        // no realm; local identities keep theirs.
        assert_eq!(lock_key(&qualified, "alice@example.org"), "alice@example.org");
        assert_eq!(lock_key(&qualified, "203.0.113.5"), "203.0.113.5");
        assert_eq!(lock_key(&qualified, "2001:db8::/64"), "2001:db8::/64");
        assert_eq!(lock_key(&qualified, "local:www-data"), "local:www-data");
        assert_eq!(lock_key(&qualified, "Unknown"), UNIDENTIFIED);
        // Without a default realm, the account is the bare login.
        let bare = IdentityConfig {
            local_realms: vec!["example.com".into(), "mail.example.com".into()],
            ..IdentityConfig::default()
        };
        for spelling in ["alice", "Alice@example.com", "alice@mail.example.com."] {
            assert_eq!(lock_key(&bare, spelling), "alice", "{spelling}");
        }
        assert_eq!(lock_key(&bare, "alice@example.org"), "alice@example.org");
        // Realms as written in the file are compared normalised.
        let mut written = IdentityConfig {
            local_realms: vec![" Mail.Example.COM. ".into()],
            default_realm: Some("Example.com".into()),
            ..IdentityConfig::default()
        };
        written.normalise_realms();
        assert_eq!(lock_key(&written, "alice@mail.example.com"), "alice@example.com");
    }

    #[test]
    fn lock_key_falls_back_to_full_lowercasing() {
        let c = IdentityConfig::default();
        assert_eq!(lock_key(&c, " <Alice@Example.COM> "), "alice@example.com");
        // Not an address (a space inside): trimmed and lowercased, Unicode
        // included, never ASCII-only.
        assert_eq!(lock_key(&c, " ÉLODIE Dupont "), "élodie dupont");
        assert_eq!(lock_key(&c, "ÉLODIE@Example.org"), "élodie@example.org");
        assert_eq!(domain_key(" Example.ORG. "), "example.org");
    }

    #[test]
    fn local_identities_keep_their_case_and_every_character() {
        let c = IdentityConfig {
            fold_subaddress: true,
            ..IdentityConfig::default()
        };
        assert_eq!(lock_key(&c, " local:www-data "), "local:www-data");
        assert_eq!(lock_key(&c, "LOCAL:WebUser"), "local:WebUser");
        assert_eq!(lock_key(&c, "local:1042"), "local:1042");
        // No +tag folding, no lowercasing, spaces kept: the script's file name.
        assert_eq!(
            lock_key(&c, "php:www-data:My Form+v2.php"),
            "php:www-data:My Form+v2.php"
        );
        assert_eq!(normalise_local_identity("local:"), Some(Err(Invalid::Empty)));
        assert_eq!(normalise_local_identity("php:a:\u{1}"), Some(Err(Invalid::Malformed)));
        assert_eq!(normalise_local_identity("alice@example.com"), None);
        assert!(is_local_identity("local:www-data") && is_local_identity("php:u:x.php"));
        assert!(!is_local_identity("localhost@example.com"));
    }
}
