// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Who is sending: the configured identity sources tried in order, each value
//! normalised, headers believed only from trusted clients.

use crate::config::address::{Invalid, lock_key, normalise_address};
use crate::config::{IdentityConfig, IdentitySource};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Most copies of one identity header that are kept per message; further
/// copies only mark the header as conflicting if they differ.
pub const MAX_HEADER_COPIES: usize = 4;

/// A normalised sending identity and the source that yielded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub value: String,
    pub source: IdentitySource,
}

impl Identity {
    /// The domain part, for per-domain rules and overrides.
    pub fn domain(&self) -> Option<&str> {
        match self.source {
            IdentitySource::ClientAddress => None,
            _ => self.value.rsplit_once('@').map(|(_, d)| d).filter(|d| !d.is_empty()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Values of the identity headers seen in one message.
#[derive(Clone, Debug, Default)]
pub struct HeaderValues {
    /// Lowercased header name to the first [`MAX_HEADER_COPIES`] raw values.
    values: HashMap<String, Vec<HeaderCopy>>,
    /// Names seen more often than could be kept with differing values.
    overflowed: Vec<String>,
}

/// One copy of an identity header, cut to a bounded length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeaderCopy {
    /// At most `max_length + 64` bytes of it.
    kept: Vec<u8>,
    /// Its whole length, for the log of a value too long to believe.
    len: usize,
}

impl HeaderValues {
    /// Records a header if `name` is one of the identity headers in `sources`.
    /// Memory per message is bounded by the number of configured headers,
    /// [`MAX_HEADER_COPIES`] and `max_len` per copy.
    pub fn record(&mut self, sources: &[IdentitySource], name: &[u8], value: &[u8], max_len: usize) {
        let Some(IdentitySource::Header(wanted)) = sources
            .iter()
            .find(|s| matches!(s, IdentitySource::Header(h) if h.as_bytes().eq_ignore_ascii_case(name)))
        else {
            return;
        };
        // Keep a little more than the identity limit so a long value is still
        // recognised as too long, not silently cut to a different identity.
        let len = value.len();
        let value = &value[..len.min(max_len + 64)];
        let copies = self.values.entry(wanted.clone()).or_default();
        if copies.len() < MAX_HEADER_COPIES {
            copies.push(HeaderCopy {
                kept: value.to_vec(),
                len,
            });
        } else if copies.iter().all(|c| c.kept != value) && !self.overflowed.contains(wanted) {
            self.overflowed.push(wanted.clone());
        }
    }
}

/// Everything known about a message that identity resolution can use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// The `{auth_authen}` macro, if the session authenticated.
    pub auth: Option<&'a [u8]>,
    /// The MAIL FROM address as sent (with or without angle brackets).
    pub envelope_from: Option<&'a [u8]>,
    pub client_ip: Option<IpAddr>,
    /// `None` until the end of the headers.
    pub headers: Option<&'a HeaderValues>,
}

/// The result of trying the sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved(Identity),
    /// A trusted header source comes first and the headers are not in yet.
    Pending,
    /// A trusted client sent differing copies of an identity header: the
    /// message cannot be attributed safely.
    Conflict {
        header: String,
    },
    /// No source yielded an identity.
    Unidentified,
}

/// A source that was tried and skipped, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub source: IdentitySource,
    pub why: String,
}

/// Tries the configured sources in order.
pub fn resolve(config: &IdentityConfig, facts: &Facts<'_>) -> (Resolution, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let header_trusted = facts
        .client_ip
        .is_some_and(|ip| config.trusted_networks.iter().any(|n| n.0.contains(&ip)))
        || stamping_login(config, facts).is_some();

    for source in config.sources.get_ref() {
        let mut skip = |why: String| {
            skipped.push(Skipped {
                source: source.clone(),
                why,
            })
        };
        let value = match source {
            IdentitySource::Auth => match facts.auth {
                Some(login) => normalise_address(config, login),
                None => continue,
            },
            IdentitySource::Header(name) => {
                if !header_trusted {
                    if let Some(h) = facts.headers.and_then(|h| h.values.get(name)) {
                        skip(format!("{} copies from an untrusted client ignored", h.len()));
                    }
                    continue;
                }
                let Some(headers) = facts.headers else {
                    return (Resolution::Pending, skipped);
                };
                let Some(copies) = headers.values.get(name) else {
                    continue;
                };
                let mut normalised = Vec::with_capacity(copies.len());
                let mut invalid = 0;
                for copy in copies {
                    let value = if copy.len > copy.kept.len() {
                        Err(Invalid::TooLong(copy.len))
                    } else {
                        normalise_header_value(config, &copy.kept)
                    };
                    match value {
                        Ok(v) => normalised.push(v),
                        Err(e) => {
                            invalid += 1;
                            skip(format!("value is {e}"));
                        }
                    }
                }
                normalised.sort_unstable();
                normalised.dedup();
                // Differing copies, or a valid copy beside an invalid one, leave
                // no copy that can be believed over the others.
                let conflicting = normalised.len() > 1
                    || headers.overflowed.contains(name)
                    || (!normalised.is_empty() && invalid > 0);
                if conflicting {
                    return (Resolution::Conflict { header: name.clone() }, skipped);
                }
                match normalised.pop() {
                    Some(v) => Ok(v),
                    None => continue,
                }
            }
            IdentitySource::EnvelopeFrom => match facts.envelope_from {
                Some(from) if !is_null_sender(from) => normalise_address(config, from),
                _ => continue,
            },
            IdentitySource::ClientAddress => match facts.client_ip {
                Some(ip) => Ok(client_key(ip, config.client_ipv6_prefix)),
                None => continue,
            },
        };
        match value {
            Ok(value) => {
                let identity = Identity {
                    value,
                    source: source.clone(),
                };
                return (Resolution::Resolved(identity), skipped);
            }
            Err(e) => skip(format!("value is {e}")),
        }
    }
    (Resolution::Unidentified, skipped)
}

/// The session's SASL login, if it is one of `identity.header_logins`: a
/// webmail's or a relay's own account, which may stamp the identity header.
/// Any other login's header is ignored, so a user cannot choose the
/// identity it is counted (or locked) as.
pub fn stamping_login(config: &IdentityConfig, facts: &Facts<'_>) -> Option<Identity> {
    let login = normalise_address(config, facts.auth?).ok()?;
    config
        .header_logins
        .iter()
        .any(|l| lock_key(config, l) == login)
        .then_some(Identity {
            value: login,
            source: IdentitySource::Auth,
        })
}

/// Whether a MAIL FROM argument is the null sender of a bounce.
pub fn is_null_sender(from: &[u8]) -> bool {
    from.trim_ascii() == b"<>" || from.trim_ascii().is_empty()
}

/// The identity of a client address: the address itself, or for IPv6 its
/// network of `v6_prefix` bits (one customer usually has a whole /64).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => match ipnet::Ipv6Net::new(v6, v6_prefix) {
                Ok(net) if v6_prefix < 128 => net.trunc().to_string(),
                _ => v6.to_string(),
            },
        },
    }
}

/// Normalises an identity header's value, which may be a bare login, an
/// address, or an address with a display name or comments.
fn normalise_header_value(config: &IdentityConfig, raw: &[u8]) -> Result<String, Invalid> {
    let trimmed = raw.trim_ascii();
    let plain = !trimmed
        .iter()
        .any(|b| b"<>()\",;:=".contains(b) || b.is_ascii_whitespace());
    if plain {
        return normalise_address(config, trimmed);
    }
    if trimmed.len() > config.max_length + 64 {
        return Err(Invalid::TooLong(trimmed.len()));
    }
    // Let mail-parser read display names, comments and encoded words by
    // presenting the value as a From header.
    let mut buf = Vec::with_capacity(trimmed.len() + 10);
    buf.extend_from_slice(b"From: ");
    buf.extend_from_slice(trimmed);
    buf.extend_from_slice(b"\r\n\r\n");
    let message = mail_parser::MessageParser::new().parse_headers(&buf);
    let address = message
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .and_then(|a| a.address());
    match address {
        Some(addr) => normalise_address(config, addr.as_bytes()),
        None => Err(Invalid::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Network;
    use toml::Spanned;

    fn config(sources: &[&str]) -> IdentityConfig {
        IdentityConfig {
            sources: Spanned::new(0..0, sources.iter().map(|s| s.parse().unwrap()).collect()),
            trusted_networks: vec!["10.0.0.0/8".parse::<Network>().unwrap()],
            ..IdentityConfig::default()
        }
    }

    fn resolved(r: (Resolution, Vec<Skipped>)) -> Identity {
        match r.0 {
            Resolution::Resolved(id) => id,
            other => panic!("expected an identity, got {other:?} (skipped: {:?})", r.1),
        }
    }

    #[test]
    fn auth_wins_when_first() {
        let c = config(&["auth", "envelope-from", "client-address"]);
        let facts = Facts {
            auth: Some(b"Alice@Example.com"),
            envelope_from: Some(b"<other@example.net>"),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            headers: None,
        };
        let id = resolved(resolve(&c, &facts));
        assert_eq!(id.value, "alice@example.com");
        assert_eq!(id.source, IdentitySource::Auth);
        assert_eq!(id.domain(), Some("example.com"));
    }

    #[test]
    fn bad_auth_falls_through_and_is_reported() {
        let c = config(&["auth", "client-address"]);
        let facts = Facts {
            auth: Some(b"\xff\xff"),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            ..Facts::default()
        };
        let (res, skipped) = resolve(&c, &facts);
        assert_eq!(
            res,
            Resolution::Resolved(Identity {
                value: "192.0.2.1".into(),
                source: IdentitySource::ClientAddress
            })
        );
        assert_eq!(skipped[0].source, IdentitySource::Auth);
        assert!(skipped[0].why.contains("UTF-8"));
    }

    #[test]
    fn header_from_trusted_client_waits_for_headers_then_wins() {
        let c = config(&["header:X-Authenticated-Sender", "envelope-from"]);
        let mut facts = Facts {
            envelope_from: Some(b"<bounce@lists.example.net>"),
            client_ip: Some("10.1.2.3".parse().unwrap()),
            ..Facts::default()
        };
        assert_eq!(resolve(&c, &facts).0, Resolution::Pending);
        let mut headers = HeaderValues::default();
        headers.record(
            c.sources.get_ref(),
            b"x-AUTHENTICATED-sender",
            b" Dave <Dave@Example.org>",
            254,
        );
        headers.record(c.sources.get_ref(), b"Subject", b"hello", 254);
        facts.headers = Some(&headers);
        let id = resolved(resolve(&c, &facts));
        assert_eq!(id.value, "dave@example.org");
        assert_eq!(id.source, IdentitySource::Header("x-authenticated-sender".into()));
    }

    #[test]
    fn forged_header_from_untrusted_client_is_never_believed() {
        let c = config(&["header:X-Authenticated-Sender", "client-address"]);
        let mut headers = HeaderValues::default();
        headers.record(
            c.sources.get_ref(),
            b"X-Authenticated-Sender",
            b"fresh-123@example.org",
            254,
        );
        let facts = Facts {
            client_ip: Some("198.51.100.7".parse().unwrap()),
            headers: Some(&headers),
            ..Facts::default()
        };
        let (res, skipped) = resolve(&c, &facts);
        let id = match res {
            Resolution::Resolved(id) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id.value, "198.51.100.7");
        assert!(skipped[0].why.contains("untrusted"));
        // Without headers yet, an untrusted client is resolved at once.
        let early = Facts {
            client_ip: Some("198.51.100.7".parse().unwrap()),
            ..Facts::default()
        };
        assert!(matches!(resolve(&c, &early).0, Resolution::Resolved(_)));
    }

    #[test]
    fn only_the_named_logins_may_stamp_the_identity_header() {
        let mut c = config(&["header:X-Authenticated-Sender", "auth"]);
        let mut headers = HeaderValues::default();
        headers.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"user@example.org", 254);
        let facts = |login: &'static [u8]| Facts {
            auth: Some(login),
            client_ip: Some("198.51.100.7".parse().unwrap()),
            headers: Some(&headers),
            ..Facts::default()
        };
        assert_eq!(
            resolved(resolve(&c, &facts(b"webmail@example.org"))).value,
            "webmail@example.org"
        );
        assert_eq!(stamping_login(&c, &facts(b"webmail@example.org")), None);
        c.header_logins = vec!["WebMail@Example.org".into()];
        assert_eq!(
            resolved(resolve(&c, &facts(b"webmail@example.org"))).value,
            "user@example.org"
        );
        assert_eq!(
            stamping_login(&c, &facts(b"webmail@example.org")).map(|i| i.value),
            Some("webmail@example.org".to_string())
        );
        // Any other login's header is ignored: it is counted as itself.
        let (res, skipped) = resolve(&c, &facts(b"mallory@example.org"));
        assert_eq!(resolved((res, skipped.clone())).value, "mallory@example.org");
        assert!(skipped[0].why.contains("untrusted"), "{skipped:?}");
    }

    #[test]
    fn two_copies_agreeing_are_fine_differing_conflict() {
        let c = config(&["header:X-Authenticated-Sender", "envelope-from"]);
        let ip = Some("10.0.0.1".parse().unwrap());
        let mut same = HeaderValues::default();
        same.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"a@example.org", 254);
        same.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"<A@EXAMPLE.org>", 254);
        let facts = Facts {
            client_ip: ip,
            headers: Some(&same),
            ..Facts::default()
        };
        assert_eq!(resolved(resolve(&c, &facts)).value, "a@example.org");

        let mut differ = HeaderValues::default();
        differ.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"a@example.org", 254);
        differ.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"b@example.org", 254);
        let facts = Facts {
            client_ip: ip,
            headers: Some(&differ),
            envelope_from: Some(b"<x@y>"),
            ..Facts::default()
        };
        assert_eq!(
            resolve(&c, &facts).0,
            Resolution::Conflict {
                header: "x-authenticated-sender".into()
            }
        );

        // A valid copy next to an invalid one is a conflict too: the invalid
        // copy must not make the valid one look unanimous.
        let mut half = HeaderValues::default();
        half.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"a@example.org", 254);
        half.record(c.sources.get_ref(), b"X-Authenticated-Sender", b"\xff", 254);
        let facts = Facts {
            client_ip: ip,
            headers: Some(&half),
            ..Facts::default()
        };
        assert!(matches!(resolve(&c, &facts).0, Resolution::Conflict { .. }));
    }

    #[test]
    fn many_copies_stay_bounded() {
        let c = config(&["header:X-Authenticated-Sender"]);
        let mut h = HeaderValues::default();
        for i in 0..10_000 {
            h.record(
                c.sources.get_ref(),
                b"X-Authenticated-Sender",
                format!("u{i}@example.org").as_bytes(),
                254,
            );
        }
        assert_eq!(h.values["x-authenticated-sender"].len(), MAX_HEADER_COPIES);
        let huge = vec![b'a'; 1_000_000];
        let mut h2 = HeaderValues::default();
        h2.record(c.sources.get_ref(), b"X-Authenticated-Sender", &huge, 254);
        assert!(h2.values["x-authenticated-sender"][0].kept.len() <= 254 + 64);
        let facts = Facts {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            headers: Some(&h2),
            ..Facts::default()
        };
        let (resolution, skipped) = resolve(&c, &facts);
        assert_eq!(resolution, Resolution::Unidentified);
        // The log names the value's real length, not the part kept.
        assert_eq!(skipped[0].why, "value is too long (1000000 bytes)");
    }

    #[test]
    fn bounces_skip_envelope_from() {
        let c = config(&["envelope-from", "client-address"]);
        let facts = Facts {
            envelope_from: Some(b"<>"),
            client_ip: Some("192.0.2.9".parse().unwrap()),
            ..Facts::default()
        };
        assert_eq!(resolved(resolve(&c, &facts)).source, IdentitySource::ClientAddress);
    }

    #[test]
    fn ipv6_clients_group_by_prefix() {
        assert_eq!(
            client_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_key("2001:db8::1".parse().unwrap(), 128), "2001:db8::1");
        assert_eq!(client_key("::ffff:192.0.2.1".parse().unwrap(), 64), "192.0.2.1");
        assert_eq!(client_key("192.0.2.1".parse().unwrap(), 64), "192.0.2.1");
    }
}
