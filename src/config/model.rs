// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Value types of the configuration file, each parsed from a string with
//! `FromStr`, so a bad value is reported by toml with its line and column.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Implements `Deserialize` through `FromStr` for a config value type.
macro_rules! deserialize_from_str {
    ($ty:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                let s = String::deserialize(de)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format!("invalid {} \"{}\": {}", $what, s, e)))
            }
        }
    };
}

/// Where the milter listens, in Postfix notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSpec {
    /// `inet:127.0.0.1:7025`, `inet6:[::1]:7025` (also `inet:[::1]:7025`).
    Inet(SocketAddr),
    /// `unix:/run/egress-milter/milter.sock`.
    Unix(PathBuf),
}

impl FromStr for SocketSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err("a unix socket path must be absolute".into());
            }
            return Ok(SocketSpec::Unix(PathBuf::from(path)));
        }
        let addr = s
            .strip_prefix("inet6:")
            .or_else(|| s.strip_prefix("inet:"))
            .ok_or("expected inet:HOST:PORT, inet6:[HOST]:PORT or unix:/PATH")?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| "expected a numeric address and port, e.g. inet:127.0.0.1:7025 or inet6:[::1]:7025")?;
        if s.starts_with("inet6:") && !addr.is_ipv6() {
            return Err("inet6: needs an IPv6 address in brackets, e.g. inet6:[::1]:7025".into());
        }
        Ok(SocketSpec::Inet(addr))
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Inet(addr) if addr.is_ipv6() => write!(f, "inet6:{addr}"),
            SocketSpec::Inet(addr) => write!(f, "inet:{addr}"),
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
deserialize_from_str!(SocketSpec, "socket");

/// File permission bits written in octal, e.g. `"0660"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mode = u32::from_str_radix(s, 8).map_err(|_| "expected octal permission bits such as \"0660\"")?;
        if mode > 0o777 {
            return Err("permission bits must be at most 0777".into());
        }
        Ok(FileMode(mode))
    }
}
deserialize_from_str!(FileMode, "mode");

/// A duration such as `"60s"`, `"2m"`, `"24h"` or `"7d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl FromStr for DurationValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
        if d.is_zero() {
            return Err("must be longer than zero".into());
        }
        Ok(DurationValue(d))
    }
}
deserialize_from_str!(DurationValue, "duration");

/// A rate: `COUNT/WINDOW`, e.g. `"30/1m"`, `"500/1h"`, `"2000/1d"`: at most
/// `COUNT` in any window of length `WINDOW` (see [`crate::limiter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: NonZeroU32,
    pub window: Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (count, window) = s
            .split_once('/')
            .ok_or("expected COUNT/WINDOW, e.g. \"30/1m\" or \"500/1h\"")?;
        let count: u32 = count.trim().parse().map_err(|_| "the count must be a whole number")?;
        let count = NonZeroU32::new(count).ok_or("the count must be at least 1")?;
        let window = window.trim();
        let window = match window {
            "s" | "m" | "h" | "d" => format!("1{window}"),
            _ => window.to_string(),
        };
        let window = humantime::parse_duration(&window).map_err(|e| format!("window: {e}"))?;
        if window.is_zero() {
            return Err("the window must be longer than zero".into());
        }
        Ok(Rate { count, window })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.window))
    }
}
deserialize_from_str!(Rate, "rate");

/// Formats a duration the way an admin writes it: `45s`, `12m`, `2h`, `1d`,
/// `1h30m` (rounded up to whole seconds).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// Where a message's sending identity may come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// The SASL login, macro `{auth_authen}`.
    Auth,
    /// A header stamped by a trusted upstream MTA; the name is stored lowercased.
    Header(String),
    /// The envelope sender (MAIL FROM).
    EnvelopeFrom,
    /// The SMTP client's address.
    ClientAddress,
    /// The Unix user that ran Postfix's sendmail command, from the pickup
    /// stamp of a local submission (see [`crate::policy::identity`]):
    /// `local:NAME`.
    LocalUser,
    /// PHP's `X-PHP-Originating-Script: UID:SCRIPT` of a local submission
    /// whose UID is the submitting user's: `php:NAME:SCRIPT`, counted beside
    /// the user's own `local:NAME`.
    PhpScript,
}

impl FromStr for IdentitySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auth" => Ok(Self::Auth),
            "envelope-from" => Ok(Self::EnvelopeFrom),
            "client-address" => Ok(Self::ClientAddress),
            "local-user" => Ok(Self::LocalUser),
            "php-script" => Ok(Self::PhpScript),
            _ => {
                let name = s.strip_prefix("header:").ok_or(
                    "expected \"auth\", \"header:NAME\", \"envelope-from\", \"client-address\", \"local-user\" or \"php-script\"",
                )?;
                let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
                if !valid {
                    return Err("a header name is printable ASCII without spaces or ':'".into());
                }
                Ok(Self::Header(name.to_ascii_lowercase()))
            }
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auth => f.write_str("auth"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::EnvelopeFrom => f.write_str("envelope-from"),
            Self::ClientAddress => f.write_str("client-address"),
            Self::LocalUser => f.write_str("local-user"),
            Self::PhpScript => f.write_str("php-script"),
        }
    }
}
deserialize_from_str!(IdentitySource, "identity source");

/// A trusted network in CIDR notation; a bare address means that host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network(pub ipnet::IpNet);

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Network(net.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Network(ipnet::IpNet::from(ip)))
            .map_err(|_| "expected an address or CIDR network such as 192.0.2.0/24 or 2001:db8::/32".into())
    }
}
deserialize_from_str!(Network, "network");

/// What a rule does when a message would exceed it. Ordered by severity: when
/// several rules trip, the most severe action wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Log it and let the message through (a per-rule dry run).
    Log,
    /// Refuse with a temporary error (4xx): the client retries later.
    Tempfail,
    /// Refuse with a permanent error (5xx).
    Reject,
    /// Lock the identity, then refuse (or hold) this and all later messages.
    Lock,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Log => "log",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
            Action::Lock => "lock",
        })
    }
}

/// What a rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Counted {
    Messages,
    Recipients,
    /// Different recipient addresses.
    DistinctRecipients,
    /// Different domains of the recipients.
    DistinctRecipientDomains,
    /// Different client addresses (IPv6: networks of `client_ipv6_prefix`).
    DistinctClientAddresses,
    /// Recipients of the identity's mail that the MTA's bounces report as
    /// failed.
    Bounces,
    /// Messages whose envelope sender or `From:` is at a domain the
    /// identity may not send as.
    ForeignSenders,
    /// Messages the content scanner classifies as spam (`[scanner]`).
    Spam,
    /// Messages carrying one of `scanner.phishing_symbols`.
    Phishing,
    /// Messages carrying one of `scanner.virus_symbols`.
    Virus,
}

impl Counted {
    /// Counts different values (a set per identity), not a quantity.
    pub fn is_distinct(self) -> bool {
        matches!(
            self,
            Counted::DistinctRecipients | Counted::DistinctRecipientDomains | Counted::DistinctClientAddresses
        )
    }

    /// Counts the content scanner's verdicts (`[scanner]`).
    pub fn is_content(self) -> bool {
        matches!(self, Counted::Spam | Counted::Phishing | Counted::Virus)
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Counted::Messages => "messages",
            Counted::Recipients => "recipients",
            Counted::DistinctRecipients => "distinct-recipients",
            Counted::DistinctRecipientDomains => "distinct-recipient-domains",
            Counted::DistinctClientAddresses => "distinct-client-addresses",
            Counted::Bounces => "bounces",
            Counted::ForeignSenders => "foreign-senders",
            Counted::Spam => "spam",
            Counted::Phishing => "phishing",
            Counted::Virus => "virus",
        })
    }
}

/// A share, written `"20%"`: at least 0.1% and at most 100%, kept in
/// tenths of a percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ratio {
    pub per_mille: u32,
}

impl Ratio {
    /// Whether `part / whole` reaches this share (a `whole` of 0 always does).
    pub fn reached(self, part: u32, whole: u32) -> bool {
        u64::from(part) * 1000 >= u64::from(self.per_mille) * u64::from(whole)
    }
}

impl FromStr for Ratio {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = s
            .trim()
            .strip_suffix('%')
            .ok_or("expected a percentage, e.g. \"20%\"")?
            .trim();
        let percent: f64 = number.parse().map_err(|_| "expected a percentage, e.g. \"20%\"")?;
        if !(0.1..=100.0).contains(&percent) {
            return Err("a percentage from 0.1% to 100%".into());
        }
        Ok(Ratio {
            per_mille: (percent * 10.0).round() as u32,
        })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_mille.is_multiple_of(10) {
            write!(f, "{}%", self.per_mille / 10)
        } else {
            write!(f, "{}.{}%", self.per_mille / 10, self.per_mille % 10)
        }
    }
}
deserialize_from_str!(Ratio, "percentage");

/// Whose traffic a rule counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Each identity separately.
    Identity,
    /// All identities of one domain together.
    Domain,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Identity => "identity",
            Scope::Domain => "domain",
        })
    }
}

/// Enforce decisions, or only log what would have been done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        })
    }
}

/// `on_error`: the answer to a message stage on a connection the MTA never
/// negotiated, which has no session to decide with (the only use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    #[default]
    Tempfail,
    Accept,
}

/// What happens to mail from a locked identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockedAction {
    /// Refuse it with the `locked` reply.
    #[default]
    Reject,
    /// Accept it into the MTA's hold queue (milter quarantine): nothing is
    /// delivered, nothing is lost, an admin releases or deletes it.
    Hold,
}

/// Where the rate counters live (`store.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    /// In this process; saved to `store.state_file` at a clean stop and
    /// restored at start.
    #[default]
    Memory,
    /// In Redis, shared by a fleet of MTAs.
    Redis,
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreBackend::Memory => "memory",
            StoreBackend::Redis => "redis",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An SMTP reply: code, enhanced status code and text.
///
/// The text may use `{identity}`, `{rule}`, `{count}`, `{limit}`,
/// `{window}` and `{retry}`, filled in per decision.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplySpec {
    pub code: String,
    pub status: String,
    pub text: String,
}

impl ReplySpec {
    pub fn new(code: &str, status: &str, text: &str) -> Self {
        Self {
            code: code.into(),
            status: status.into(),
            text: text.into(),
        }
    }

    /// Checks that the reply is well formed and of the class `class` (4 or 5).
    pub fn check(&self, class: u8) -> Result<(), String> {
        let code = self.code.as_bytes();
        let code_ok = code.len() == 3 && code.iter().all(u8::is_ascii_digit) && code[0] == b'0' + class;
        if !code_ok {
            return Err(format!("code \"{}\" must be a {class}xx SMTP reply code", self.code));
        }
        let mut parts = self.status.split('.');
        let status_ok = parts.next() == Some(&*class.to_string())
            && parts.clone().count() == 2
            && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if !status_ok {
            return Err(format!(
                "status \"{}\" must be an enhanced status code of class {class}, e.g. {class}.7.1",
                self.status
            ));
        }
        if self.text.trim().is_empty() || self.text.len() > 900 || self.text.contains(['\r', '\n']) {
            return Err("text must be one non-empty line of at most 900 bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_in_postfix_notation() {
        assert_eq!(
            "inet:127.0.0.1:7025".parse::<SocketSpec>().unwrap(),
            SocketSpec::Inet("127.0.0.1:7025".parse().unwrap())
        );
        assert_eq!(
            "inet6:[::1]:7025".parse::<SocketSpec>().unwrap(),
            SocketSpec::Inet("[::1]:7025".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/egress-milter/milter.sock".parse::<SocketSpec>().unwrap(),
            SocketSpec::Unix("/run/egress-milter/milter.sock".into())
        );
        for bad in [
            "127.0.0.1:7025",
            "inet:localhost:7025",
            "inet6:127.0.0.1:1",
            "unix:rel/path",
            "inet:1.2.3.4",
        ] {
            assert!(bad.parse::<SocketSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            "inet6:[::1]:7025".parse::<SocketSpec>().unwrap().to_string(),
            "inet6:[::1]:7025"
        );
    }

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "500/1h".parse().unwrap();
        assert_eq!(r.count.get(), 500);
        assert_eq!(r.window, Duration::from_secs(3600));
        assert_eq!("30/m".parse::<Rate>().unwrap().window, Duration::from_secs(60));
        assert_eq!("2000/1d".parse::<Rate>().unwrap().to_string(), "2000/1d");
        for bad in ["30", "0/1m", "x/1m", "30/1x", "30/0s", "-1/1m"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_like_an_admin_writes_them() {
        assert_eq!(format_duration(Duration::from_secs(720)), "12m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!("24h".parse::<DurationValue>().unwrap().0, Duration::from_secs(86_400));
        assert!("0s".parse::<DurationValue>().is_err());
    }

    #[test]
    fn identity_sources() {
        assert_eq!(
            "header:X-Authenticated-Sender".parse::<IdentitySource>().unwrap(),
            IdentitySource::Header("x-authenticated-sender".into())
        );
        assert!("header:".parse::<IdentitySource>().is_err());
        assert!("header:a b".parse::<IdentitySource>().is_err());
        assert!("sasl".parse::<IdentitySource>().is_err());
        for s in ["local-user", "php-script"] {
            assert_eq!(s.parse::<IdentitySource>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn networks() {
        let n: Network = "192.0.2.7/24".parse().unwrap();
        assert_eq!(n.0.to_string(), "192.0.2.0/24");
        assert_eq!("::1".parse::<Network>().unwrap().0.to_string(), "::1/128");
        assert!("192.0.2.0/33".parse::<Network>().is_err());
    }

    #[test]
    fn reply_classes() {
        assert!(ReplySpec::new("451", "4.7.1", "slow down").check(4).is_ok());
        assert!(ReplySpec::new("551", "4.7.1", "x").check(4).is_err());
        assert!(ReplySpec::new("451", "5.7.1", "x").check(4).is_err());
        assert!(ReplySpec::new("550", "5.7", "x").check(5).is_err());
        assert!(ReplySpec::new("550", "5.7.1", "two\nlines").check(5).is_err());
        assert!(ReplySpec::new("550", "5.7.1", " ").check(5).is_err());
    }

    #[test]
    fn actions_order_by_severity() {
        assert!(Action::Log < Action::Tempfail);
        assert!(Action::Tempfail < Action::Reject);
        assert!(Action::Reject < Action::Lock);
    }
}
