// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Who is sending: the configured identity sources tried in order, each value
//! normalised, headers believed only from trusted clients.
//!
//! # Local submissions
//!
//! Mail a program on the MTA host submits with Postfix's sendmail command
//! (PHP's `mail()` among them) enters through `pickup`, which prepends
//! `Received: by HOST (Postfix, from userid N)` and `id QUEUEID; DATE` on
//! the next line. A milter never sees that header: Postfix hides its own
//! first Received header from milters, for Sendmail compatibility
//! (milter8.c), so every Received header a milter is shown of such a
//! message was written by the submitting program itself. The uid reaches
//! the milter only through the stamp that Postfix's `header_checks` copies
//! from pickup's header into [`STAMP_HEADER`] before it (the recipe is in
//! docs/postfix.md): `X-Egress-Submitter: uid=N id=QUEUEID`, the first
//! header of the message. It is believed only
//! - through the local door ([`Door::LocalSubmission`]), never over SMTP;
//! - as the message's first header: the program's own headers all come
//!   after pickup's, so a copy below the first header is the program's;
//! - when it names the queue id the MTA gave this very message (macro
//!   `i`), which the program cannot know when it writes its headers: a
//!   copy it writes at the top, where the stamp would be had the admin not
//!   installed the recipe, is not believed either.
//!
//! `local-user` then yields `local:NAME` (the uid's name through NSS, or
//! `local:UID`), and `php-script` yields `php:NAME:SCRIPT` from PHP's
//! [`PHP_HEADER`] when the uid it names is the stamp's.

use crate::config::address::{
    Invalid, LOCAL_USER_PREFIX, PHP_SCRIPT_PREFIX, is_local_identity, lock_key, normalise_address,
};
use crate::config::{IdentityConfig, IdentitySource};
use crate::policy::Door;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Most copies of one identity header that are kept per message; further
/// copies only mark the header as conflicting if they differ.
pub const MAX_HEADER_COPIES: usize = 4;

/// The header (lowercase) that Postfix's `header_checks` stamp puts above
/// pickup's Received header: `X-Egress-Submitter: uid=N id=QUEUEID`.
pub const STAMP_HEADER: &str = "x-egress-submitter";

/// PHP's header (lowercase), with `mail.add_x_header = On`:
/// `X-PHP-Originating-Script: UID:SCRIPT`, where UID is the owner of the
/// main script file (PHP's `getmyuid()`) and SCRIPT the base name of the
/// file that called `mail()`.
pub const PHP_HEADER: &str = "x-php-originating-script";

/// A normalised sending identity and the source that yielded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub value: String,
    pub source: IdentitySource,
}

impl Identity {
    /// The domain part, for per-domain rules and overrides. A client
    /// address and a local user (or its script) have none.
    pub fn domain(&self) -> Option<&str> {
        match self.source {
            IdentitySource::ClientAddress | IdentitySource::LocalUser | IdentitySource::PhpScript => None,
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
    /// Headers seen so far, identity headers or not: tells the first one.
    seen: usize,
    /// The submitter stamp ([`STAMP_HEADER`]), if it was the first header.
    stamp: Option<HeaderCopy>,
    /// Stamp headers seen below the first header: the sender's, ignored.
    stamps_below: usize,
    /// The first [`MAX_HEADER_COPIES`] copies of [`PHP_HEADER`].
    php: Vec<HeaderCopy>,
    /// More PHP headers than could be kept, some of them differing.
    php_overflowed: bool,
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
    /// Records a header if `name` is one of the identity headers in `sources`
    /// (or, for the local-submission sources, the stamp or PHP's header).
    /// Memory per message is bounded by the number of configured headers,
    /// [`MAX_HEADER_COPIES`] and `max_len` per copy. Every header of the
    /// message is to be passed, in order: the stamp is believed only as the
    /// first.
    pub fn record(&mut self, sources: &[IdentitySource], name: &[u8], value: &[u8], max_len: usize) {
        let first = self.seen == 0;
        self.seen = self.seen.saturating_add(1);
        let copy = || HeaderCopy {
            kept: value[..value.len().min(max_len + 64)].to_vec(),
            len: value.len(),
        };
        let local = sources
            .iter()
            .any(|s| matches!(s, IdentitySource::LocalUser | IdentitySource::PhpScript));
        if local && name.eq_ignore_ascii_case(STAMP_HEADER.as_bytes()) {
            if first {
                self.stamp = Some(copy());
            } else {
                self.stamps_below = self.stamps_below.saturating_add(1);
            }
            return;
        }
        if sources.contains(&IdentitySource::PhpScript) && name.eq_ignore_ascii_case(PHP_HEADER.as_bytes()) {
            let copy = copy();
            if self.php.len() < MAX_HEADER_COPIES {
                self.php.push(copy);
            } else if self.php.iter().all(|c| c.kept != copy.kept) {
                self.php_overflowed = true;
            }
            return;
        }
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

    /// The uid Postfix's stamp names, if the stamp is Postfix's: the first
    /// header, well formed, naming `queue_id` (the message's macro `i`).
    /// Whether the first header is Postfix's stamp of a local submission
    /// for the message `queue_id` (see [`STAMP_HEADER`]), well formed.
    pub fn is_stamped(&self, queue_id: Option<&str>) -> bool {
        self.stamped_uid(queue_id).is_ok()
    }

    fn stamped_uid(&self, queue_id: Option<&str>) -> Result<u32, StampError> {
        let Some(stamp) = &self.stamp else {
            return Err(StampError::Missing {
                below: self.stamps_below,
            });
        };
        let invalid = |why: String| Err(StampError::Invalid(why));
        if stamp.len > stamp.kept.len() {
            return invalid(format!("is too long ({} bytes)", stamp.len));
        }
        let Ok(text) = std::str::from_utf8(&stamp.kept) else {
            return invalid("is not UTF-8".into());
        };
        let mut fields = text.split_ascii_whitespace();
        let (Some(uid), Some(id), None) = (
            fields.next().and_then(|f| f.strip_prefix("uid=")),
            fields.next().and_then(|f| f.strip_prefix("id=")),
            fields.next(),
        ) else {
            return invalid(format!(
                "\"{}\" is malformed (expected uid=N id=QUEUEID)",
                text.escape_debug()
            ));
        };
        let uid = match uid.parse::<u32>() {
            Ok(n) if uid.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return invalid(format!("names no uid: \"{}\"", uid.escape_debug())),
        };
        match queue_id.filter(|q| !q.is_empty() && *q != "NONE") {
            Some(q) if q == id => Ok(uid),
            Some(q) => invalid(format!(
                "names queue id \"{}\", not this message's ({q}): not Postfix's",
                id.escape_debug()
            )),
            None => invalid("cannot be checked: the MTA gave no queue id (macro i)".into()),
        }
    }
}

/// Why a message has no stamp that can be believed.
enum StampError {
    /// No stamp as the first header; `below` copies further down (the
    /// sender's own).
    Missing {
        below: usize,
    },
    Invalid(String),
}

impl fmt::Display for StampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StampError::Missing { below: 0 } => write!(
                f,
                "no X-Egress-Submitter stamp as the first header: is the pickup stamp of docs/postfix.md installed?"
            ),
            StampError::Missing { below } => write!(
                f,
                "no X-Egress-Submitter stamp as the first header ({below} below it, written by the sender, ignored): is the pickup stamp of docs/postfix.md installed?"
            ),
            StampError::Invalid(why) => write!(f, "the X-Egress-Submitter stamp {why}"),
        }
    }
}

/// The Unix user a local submission's stamp names, with its name as the
/// system's name service (NSS) gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    /// `Ok(None)`: no such user, counted by its number; `Err`: the lookup
    /// failed, and the user cannot be counted under its name.
    pub name: Result<Option<String>, String>,
}

impl LocalUser {
    /// `local:NAME`, or `local:UID` when the uid has no name, or one that
    /// could be mistaken for another identity (all digits, a ':', spaces or
    /// control characters).
    pub fn identity_value(&self) -> Result<String, String> {
        let name = self
            .name
            .as_ref()
            .map_err(|e| format!("the name of uid {} is unknown: {e}", self.uid))?;
        Ok(match name.as_deref().filter(|n| plain_user_name(n)) {
            Some(name) => format!("{LOCAL_USER_PREFIX}{name}"),
            None => format!("{LOCAL_USER_PREFIX}{}", self.uid),
        })
    }
}

fn plain_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.bytes().all(|b| b.is_ascii_digit())
        && !name.chars().any(|c| c.is_control() || c.is_whitespace() || c == ':')
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
    /// How the mail came in: the local-submission sources apply only to
    /// [`Door::LocalSubmission`].
    pub door: Door,
    /// The MTA's queue id (macro `i`), which the stamp must name.
    pub queue_id: Option<&'a str>,
    /// The user the stamp names, with its name looked up by the caller
    /// (see [`stamped_uid`]).
    pub local_user: Option<&'a LocalUser>,
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
    let header_trusted = header_trusted(config, facts);

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
                        skip(format!(
                            "{} copies from a client or login not trusted to set it ignored",
                            h.len()
                        ));
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
            IdentitySource::LocalUser | IdentitySource::PhpScript => {
                if facts.door != Door::LocalSubmission {
                    if let Some(n) = facts.headers.map(|h| h.local_headers(source)).filter(|n| *n > 0) {
                        skip(format!("{n} local-submission headers ignored: the mail came over SMTP"));
                    }
                    continue;
                }
                let Some(headers) = facts.headers else {
                    return (Resolution::Pending, skipped);
                };
                let local = if *source == IdentitySource::LocalUser {
                    local_user_value(facts, headers)
                } else {
                    php_script_value(config, facts, headers)
                };
                match local {
                    Ok(Some(value)) => Ok(value),
                    Ok(None) => continue,
                    Err(why) => {
                        skip(why);
                        continue;
                    }
                }
            }
        };
        // Only the local-submission sources may yield a local identity.
        let value = value.and_then(|v| match source {
            IdentitySource::LocalUser | IdentitySource::PhpScript => Ok(v),
            _ if is_local_identity(&v) => Err(Invalid::Reserved),
            _ => Ok(v),
        });
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

/// Whether the identity headers of this session are believed. A session
/// that logged in with SASL is trusted by its login alone: only the
/// `header_logins` may stamp the header, whatever network they connect
/// from, so that a user on the webmail host's network (or on loopback
/// beside it) cannot choose whom it is counted or locked as. A client that
/// did not log in is trusted by its address (`trusted_networks`): a relay
/// that stamps the header for the users it authenticated itself.
pub fn header_trusted(config: &IdentityConfig, facts: &Facts<'_>) -> bool {
    if facts.auth.is_some() {
        return stamping_login(config, facts).is_some();
    }
    facts
        .client_ip
        .is_some_and(|ip| config.trusted_networks.iter().any(|n| n.0.contains(&ip)))
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

/// The uid that submitted a local message, if Postfix's stamp names one
/// that can be believed (see the module documentation): the caller looks
/// its name up and hands it to [`resolve`] as [`Facts::local_user`].
pub fn stamped_uid(facts: &Facts<'_>) -> Option<u32> {
    if facts.door != Door::LocalSubmission {
        return None;
    }
    facts.headers?.stamped_uid(facts.queue_id).ok()
}

/// The Unix user behind a script identity, counted (and its lock enforced)
/// beside it, so that a script that renames itself cannot escape its
/// user's limits and a locked user locks all its scripts.
pub fn user_of_script(facts: &Facts<'_>) -> Option<Identity> {
    let user = facts.local_user?;
    (stamped_uid(facts) == Some(user.uid)).then_some(())?;
    let value = user.identity_value().ok()?;
    Some(Identity {
        value,
        source: IdentitySource::LocalUser,
    })
}

/// `local-user`: the stamp's user. `Ok(None)` for a message without a stamp
/// and with the null sender: Postfix's own bounce, when bounces are
/// filtered (`internal_mail_filter_classes`), not worth a warning each.
fn local_user_value(facts: &Facts<'_>, headers: &HeaderValues) -> Result<Option<String>, String> {
    let uid = match headers.stamped_uid(facts.queue_id) {
        Ok(uid) => uid,
        Err(StampError::Missing { below: 0 }) if facts.envelope_from.is_some_and(is_null_sender) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    looked_up(facts, uid)?.identity_value().map(Some)
}

/// `php-script`: PHP's header, if the uid it names is the stamp's.
fn php_script_value(
    config: &IdentityConfig,
    facts: &Facts<'_>,
    headers: &HeaderValues,
) -> Result<Option<String>, String> {
    let Some(first) = headers.php.first() else {
        return Ok(None);
    };
    if headers.php_overflowed || headers.php.iter().any(|c| c.kept != first.kept) {
        return Err("differing X-PHP-Originating-Script headers: none is believed".into());
    }
    if first.len > first.kept.len() {
        return Err(format!("X-PHP-Originating-Script is too long ({} bytes)", first.len));
    }
    let (uid, script) = parse_php_header(&first.kept).map_err(|why| format!("X-PHP-Originating-Script {why}"))?;
    let stamped = headers
        .stamped_uid(facts.queue_id)
        .map_err(|e| format!("X-PHP-Originating-Script not believed, its uid cannot be checked: {e}"))?;
    if uid != stamped {
        return Err(format!(
            "X-PHP-Originating-Script names uid {uid}, but uid {stamped} submitted the message: not believed"
        ));
    }
    let user = looked_up(facts, uid)?.identity_value()?;
    let user = user.strip_prefix(LOCAL_USER_PREFIX).unwrap_or(&user);
    let value = format!("{PHP_SCRIPT_PREFIX}{user}:{script}");
    if value.len() > config.max_length {
        return Err(format!("value is {}", Invalid::TooLong(value.len())));
    }
    Ok(Some(value))
}

/// The caller's lookup of `uid`'s name.
fn looked_up<'a>(facts: &Facts<'a>, uid: u32) -> Result<&'a LocalUser, String> {
    facts
        .local_user
        .filter(|u| u.uid == uid)
        .ok_or_else(|| format!("the name of uid {uid} was not looked up"))
}

/// `UID:SCRIPT` of PHP's header: the uid, and the script's base name (PHP
/// writes only that; a path is cut to it, as PHP would have).
fn parse_php_header(raw: &[u8]) -> Result<(u32, &str), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not UTF-8".to_string())?;
    let (uid, script) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| "is malformed (expected UID:SCRIPT)".to_string())?;
    let uid = uid.trim();
    let uid = match uid.parse::<u32>() {
        Ok(n) if uid.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(format!("names no uid: \"{}\"", uid.escape_debug())),
    };
    let script = script.trim();
    let script = script.rsplit('/').next().unwrap_or(script).trim();
    if script.is_empty() || script.chars().any(char::is_control) {
        return Err(format!("names no script: \"{}\"", script.escape_debug()));
    }
    Ok((uid, script))
}

impl HeaderValues {
    /// How many headers of a local-submission source were seen, for the log
    /// of mail that did not come through the local door.
    fn local_headers(&self, source: &IdentitySource) -> usize {
        match source {
            IdentitySource::LocalUser => usize::from(self.stamp.is_some()) + self.stamps_below,
            IdentitySource::PhpScript => self.php.len(),
            _ => 0,
        }
    }
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
            ..Facts::default()
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
        assert!(skipped[0].why.contains("not trusted"));
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
        assert!(skipped[0].why.contains("not trusted"), "{skipped:?}");
    }

    #[test]
    fn a_login_on_a_trusted_network_is_still_trusted_by_its_login_alone() {
        // The webmail host and its users share 10.0.0.0/8: a user who logs
        // in from there is not the webmail, and its header chooses nothing.
        let mut c = config(&["header:X-Authenticated-Sender", "auth", "client-address"]);
        c.header_logins = vec!["webmail@example.org".into()];
        let mut headers = HeaderValues::default();
        headers.record(
            c.sources.get_ref(),
            b"X-Authenticated-Sender",
            b"alice@example.org",
            254,
        );
        let facts = |login: Option<&'static [u8]>| Facts {
            auth: login,
            client_ip: Some("10.9.9.9".parse().unwrap()),
            headers: Some(&headers),
            ..Facts::default()
        };
        let (res, skipped) = resolve(&c, &facts(Some(b"mallory@example.org")));
        assert_eq!(resolved((res, skipped.clone())).value, "mallory@example.org");
        assert!(skipped[0].why.contains("not trusted"), "{skipped:?}");
        // At MAIL, before any header, mallory is known at once.
        let early = Facts {
            headers: None,
            ..facts(Some(b"mallory@example.org"))
        };
        assert_eq!(resolved(resolve(&c, &early)).value, "mallory@example.org");
        // The webmail's own login stamps; a relay without a login on the
        // trusted network too.
        assert_eq!(
            resolved(resolve(&c, &facts(Some(b"webmail@example.org")))).value,
            "alice@example.org"
        );
        assert_eq!(resolved(resolve(&c, &facts(None))).value, "alice@example.org");
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

    // ---- local submissions (the local door) ----

    const QUEUE_ID: &str = "3F2A1C0901";

    /// The headers of a local submission as the milter sees them: `stamp`
    /// first (if any), then what the user's program wrote.
    fn local_headers(c: &IdentityConfig, stamp: Option<&str>, rest: &[(&str, &str)]) -> HeaderValues {
        let mut h = HeaderValues::default();
        if let Some(stamp) = stamp {
            h.record(
                c.sources.get_ref(),
                b"X-Egress-Submitter",
                stamp.as_bytes(),
                c.max_length,
            );
        }
        for (name, value) in rest {
            h.record(c.sources.get_ref(), name.as_bytes(), value.as_bytes(), c.max_length);
        }
        h
    }

    fn local_facts<'a>(headers: Option<&'a HeaderValues>, user: Option<&'a LocalUser>) -> Facts<'a> {
        Facts {
            envelope_from: Some(b"<www-data@host.example>"),
            client_ip: Some("127.0.0.1".parse().unwrap()),
            headers,
            door: Door::LocalSubmission,
            queue_id: Some(QUEUE_ID),
            local_user: user,
            ..Facts::default()
        }
    }

    fn www_data() -> LocalUser {
        LocalUser {
            uid: 33,
            name: Ok(Some("www-data".into())),
        }
    }

    #[test]
    fn the_stamp_names_the_local_user_and_waits_for_the_headers() {
        let c = config(&["auth", "php-script", "local-user", "client-address"]);
        let user = www_data();
        // Before the headers: pending, whatever else is known.
        assert_eq!(resolve(&c, &local_facts(None, None)).0, Resolution::Pending);
        let h = local_headers(&c, Some("uid=33 id=3F2A1C0901"), &[("Subject", "hi")]);
        let facts = local_facts(Some(&h), Some(&user));
        assert_eq!(stamped_uid(&facts), Some(33));
        let id = resolved(resolve(&c, &facts));
        assert_eq!(
            (id.value.as_str(), &id.source),
            ("local:www-data", &IdentitySource::LocalUser)
        );
        assert_eq!(id.domain(), None);
        // A uid without a name is counted by its number.
        let nameless = LocalUser {
            uid: 33,
            name: Ok(None),
        };
        let id = resolved(resolve(&c, &local_facts(Some(&h), Some(&nameless))));
        assert_eq!(id.value, "local:33");
        // A name that could pass for a uid, or holds a ':', is the number too.
        for odd in ["1042", "a:b", "a b", ""] {
            let u = LocalUser {
                uid: 33,
                name: Ok(Some(odd.into())),
            };
            assert_eq!(u.identity_value().unwrap(), "local:33", "{odd:?}");
        }
    }

    #[test]
    fn a_failed_name_lookup_falls_through_and_is_reported() {
        let c = config(&["local-user", "client-address"]);
        let h = local_headers(&c, Some("uid=33 id=3F2A1C0901"), &[]);
        let broken = LocalUser {
            uid: 33,
            name: Err("timed out".into()),
        };
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&broken)));
        assert_eq!(resolved((res, skipped.clone())).value, "127.0.0.1");
        assert!(skipped[0].why.contains("timed out"), "{skipped:?}");
        // And a caller that did not look the name up is no better.
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), None));
        assert_eq!(resolved((res, skipped.clone())).value, "127.0.0.1");
        assert!(skipped[0].why.contains("not looked up"), "{skipped:?}");
    }

    #[test]
    fn only_the_first_header_can_be_the_stamp() {
        let c = config(&["local-user", "client-address"]);
        let user = www_data();
        // Forged copies below the real stamp change nothing.
        let h = local_headers(
            &c,
            Some("uid=33 id=3F2A1C0901"),
            &[
                ("X-Egress-Submitter", "uid=0 id=3F2A1C0901"),
                (
                    "Received",
                    "by host (Postfix, from userid 0)\n\tid 3F2A1C0901; Mon, 1 Jan 2024",
                ),
            ],
        );
        assert_eq!(
            resolved(resolve(&c, &local_facts(Some(&h), Some(&user)))).value,
            "local:www-data"
        );
        // A copy below the first header is never the stamp: without the
        // recipe installed, the user's own headers come first.
        let h = local_headers(
            &c,
            None,
            &[("Subject", "x"), ("X-Egress-Submitter", "uid=0 id=3F2A1C0901")],
        );
        let facts = local_facts(Some(&h), Some(&user));
        assert_eq!(stamped_uid(&facts), None);
        let (res, skipped) = resolve(&c, &facts);
        assert_eq!(resolved((res, skipped.clone())).value, "127.0.0.1");
        assert!(skipped[0].why.contains("1 below it"), "{skipped:?}");
        assert!(skipped[0].why.contains("docs/postfix.md"), "{skipped:?}");
    }

    #[test]
    fn a_stamp_that_is_not_postfixs_is_not_believed() {
        let c = config(&["local-user", "client-address"]);
        let root = LocalUser {
            uid: 0,
            name: Ok(Some("root".into())),
        };
        for (stamp, why) in [
            // The queue id of another message: written by the sender at the
            // top, where the stamp would be had the recipe not been installed.
            ("uid=0 id=4B00000000", "not this message's"),
            ("uid=0", "malformed"),
            ("uid=0 id=3F2A1C0901 extra", "malformed"),
            ("uid=-1 id=3F2A1C0901", "names no uid"),
            ("uid=+0 id=3F2A1C0901", "names no uid"),
            ("uid=99999999999 id=3F2A1C0901", "names no uid"),
            ("id=3F2A1C0901 uid=0", "malformed"),
            ("uid=\u{7f}0 id=3F2A1C0901", "names no uid"),
        ] {
            let h = local_headers(&c, Some(stamp), &[]);
            let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&root)));
            assert_eq!(resolved((res, skipped.clone())).value, "127.0.0.1", "{stamp}");
            assert!(skipped[0].why.contains(why), "{stamp}: {skipped:?}");
        }
        // No queue id from the MTA: nothing to check the stamp against.
        let h = local_headers(&c, Some("uid=0 id=NONE"), &[]);
        let mut facts = local_facts(Some(&h), Some(&root));
        facts.queue_id = Some("NONE");
        assert_eq!(stamped_uid(&facts), None);
        // A stamp too long to keep whole is not cut to a different one.
        let long = format!("uid=0 id=3F2A1C0901{}", " ".repeat(400));
        let h = local_headers(&c, Some(&long), &[]);
        let (_, skipped) = resolve(&c, &local_facts(Some(&h), Some(&root)));
        assert!(skipped[0].why.contains("too long"), "{skipped:?}");
    }

    #[test]
    fn over_smtp_the_local_headers_choose_nothing() {
        let c = config(&["php-script", "local-user", "header:X-Sender", "client-address"]);
        let root = LocalUser {
            uid: 0,
            name: Ok(Some("root".into())),
        };
        let h = local_headers(
            &c,
            Some("uid=0 id=3F2A1C0901"),
            &[("X-PHP-Originating-Script", "0:evil.php")],
        );
        for client in ["127.0.0.1:4711", "198.51.100.7:25"] {
            let client: std::net::SocketAddr = client.parse().unwrap();
            let facts = Facts {
                client_ip: Some(client.ip()),
                door: Door::of(Some(client)),
                ..local_facts(Some(&h), Some(&root))
            };
            assert_eq!(facts.door, Door::Smtp);
            assert_eq!(stamped_uid(&facts), None);
            assert_eq!(user_of_script(&facts), None);
            let (res, skipped) = resolve(&c, &facts);
            assert_eq!(resolved((res, skipped.clone())).value, client.ip().to_string());
            assert!(skipped.iter().all(|s| s.why.contains("came over SMTP")), "{skipped:?}");
            assert_eq!(skipped.len(), 2, "{skipped:?}");
        }
        // Without headers yet, SMTP mail is not held up for them.
        let early = Facts {
            door: Door::Smtp,
            ..local_facts(None, None)
        };
        assert!(matches!(resolve(&c, &early).0, Resolution::Resolved(_)));
    }

    #[test]
    fn the_php_header_is_believed_with_the_submitters_uid_only() {
        let c = config(&["php-script", "local-user", "client-address"]);
        let user = www_data();
        let with = |php: &[&str]| {
            let rest: Vec<(&str, &str)> = php.iter().map(|v| ("X-PHP-Originating-Script", *v)).collect();
            local_headers(&c, Some("uid=33 id=3F2A1C0901"), &rest)
        };
        let h = with(&["33:contact.php"]);
        let facts = local_facts(Some(&h), Some(&user));
        let id = resolved(resolve(&c, &facts));
        assert_eq!(
            (id.value.as_str(), &id.source),
            ("php:www-data:contact.php", &IdentitySource::PhpScript)
        );
        assert_eq!(id.domain(), None);
        // Its user is counted beside it.
        assert_eq!(
            user_of_script(&facts),
            Some(Identity {
                value: "local:www-data".into(),
                source: IdentitySource::LocalUser
            })
        );
        // A path is cut to the file's name, as PHP writes it; case is kept.
        let h = with(&[" 33:/var/www/site/Contact Form.php "]);
        assert_eq!(
            resolved(resolve(&c, &local_facts(Some(&h), Some(&user)))).value,
            "php:www-data:Contact Form.php"
        );
        // Another uid's script (or the script owner's, under mod_php): the
        // user itself is counted.
        for (php, why) in [
            ("0:evil.php", "names uid 0, but uid 33 submitted"),
            ("x:evil.php", "names no uid"),
            ("33", "malformed"),
            ("33:", "names no script"),
            ("33:a\u{1}b.php", "names no script"),
        ] {
            let h = with(&[php]);
            let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&user)));
            assert_eq!(resolved((res, skipped.clone())).value, "local:www-data", "{php}");
            assert!(skipped[0].why.contains(why), "{php}: {skipped:?}");
        }
        // Several copies: the same is fine, differing ones are not believed.
        let h = with(&["33:a.php", "33:a.php"]);
        assert_eq!(
            resolved(resolve(&c, &local_facts(Some(&h), Some(&user)))).value,
            "php:www-data:a.php"
        );
        let h = with(&["33:a.php", "33:b.php"]);
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&user)));
        assert_eq!(resolved((res, skipped.clone())).value, "local:www-data");
        assert!(skipped[0].why.contains("differing"), "{skipped:?}");
        // No stamp: the PHP header cannot be checked, and is not believed.
        let h = local_headers(&c, None, &[("X-PHP-Originating-Script", "33:a.php")]);
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&user)));
        assert_eq!(resolved((res, skipped.clone())).value, "127.0.0.1");
        assert!(skipped[0].why.contains("cannot be checked"), "{skipped:?}");
        // No PHP header: the next source, silently.
        let h = with(&[]);
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&user)));
        assert_eq!(resolved((res, skipped.clone())).value, "local:www-data");
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn script_identities_are_bounded() {
        let mut c = config(&["php-script", "local-user"]);
        c.max_length = 40;
        let user = www_data();
        let name = format!("33:{}.php", "x".repeat(30));
        let h = local_headers(&c, Some("uid=33 id=3F2A1C0901"), &[("X-PHP-Originating-Script", &name)]);
        let (res, skipped) = resolve(&c, &local_facts(Some(&h), Some(&user)));
        assert_eq!(resolved((res, skipped.clone())).value, "local:www-data");
        assert!(skipped[0].why.contains("too long"), "{skipped:?}");
        // However many PHP headers come, a handful are kept, each bounded.
        let mut h = HeaderValues::default();
        for i in 0..10_000 {
            h.record(
                c.sources.get_ref(),
                b"X-PHP-Originating-Script",
                format!("33:s{i}.php{}", "y".repeat(i % 500)).as_bytes(),
                c.max_length,
            );
            h.record(c.sources.get_ref(), b"X-Egress-Submitter", b"uid=0 id=X", c.max_length);
        }
        assert_eq!(h.php.len(), MAX_HEADER_COPIES);
        assert!(h.php.iter().all(|p| p.kept.len() <= c.max_length + 64));
        assert!(h.php_overflowed);
        assert_eq!(h.stamps_below, 10_000, "every stamp came after the first header");
    }

    #[test]
    fn other_sources_cannot_yield_a_local_identity() {
        let c = config(&["auth", "envelope-from", "client-address"]);
        let facts = Facts {
            auth: Some(b"local:root"),
            envelope_from: Some(b"<php:www-data:x.php>"),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            ..Facts::default()
        };
        let (res, skipped) = resolve(&c, &facts);
        assert_eq!(resolved((res, skipped.clone())).value, "192.0.2.1");
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped.iter().all(|s| s.why.contains("reserved")), "{skipped:?}");
    }

    #[test]
    fn a_bounce_without_a_stamp_falls_through_quietly() {
        let c = config(&["local-user", "client-address"]);
        let h = local_headers(&c, None, &[("Subject", "Undelivered Mail Returned to Sender")]);
        let facts = Facts {
            envelope_from: Some(b"<>"),
            ..local_facts(Some(&h), None)
        };
        let (res, skipped) = resolve(&c, &facts);
        assert_eq!(resolved((res, skipped.clone())).source, IdentitySource::ClientAddress);
        assert!(skipped.is_empty(), "{skipped:?}");
    }
}
