// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The `[scanner]` section: the content scanner (rspamd) asked for a verdict
//! on each outbound message, for the rules that count `spam`, `phishing`
//! and `virus` (docs/detection.md, "Content verdicts").

use super::DurationValue;
use super::validate::Violation;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest `timeout` accepted: well inside Postfix's
/// `milter_content_timeout` (300 s by default; 60 s in the shipped
/// main.cf.milter) and Sendmail's `E:` timeout of the end of message (5 m by
/// default; 60 s in the shipped .mc), so that the MTA never gives up on the
/// milter (and applies `milter_default_action` to the message) while it
/// waits for the scanner.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest `max_message_size`: rspamd's own default `max_message`
/// (50 MiB); a message is buffered in memory up to this size.
pub const MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// rspamd's actions, as its HTTP protocol names them.
pub const RSPAMD_ACTIONS: [&str; 6] = [
    "reject",
    "soft reject",
    "rewrite subject",
    "add header",
    "greylist",
    "no action",
];

/// `[scanner]`: off while `url` is unset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerConfig {
    /// rspamd's normal worker, `http://host:port` (plain HTTP).
    pub url: Option<ScannerUrl>,
    /// The longest wait for one verdict, connection included; past it the
    /// message passes unscanned.
    pub timeout: DurationValue,
    /// Bytes: a bigger message (headers and body) is not scanned, and never
    /// more than this is buffered per message.
    pub max_message_size: u64,
    /// rspamd actions that make a message spam.
    pub spam_actions: Vec<String>,
    /// A score at least this high makes a message spam too.
    pub spam_score: Option<f64>,
    /// Symbols that make a message phishing.
    pub phishing_symbols: Vec<String>,
    /// Symbols that make a message carry a virus.
    pub virus_symbols: Vec<String>,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: DurationValue(Duration::from_secs(5)),
            max_message_size: 1024 * 1024,
            spam_actions: ["reject", "rewrite subject", "add header"].map(String::from).into(),
            spam_score: None,
            phishing_symbols: [
                "PHISHING",
                "PHISHED_OPENPHISH",
                "PHISHED_PHISHTANK",
                "PHISHED_GENERIC_SERVICE",
                "DBL_PHISH",
                "DBL_ABUSE_PHISH",
                "PH_SURBL_MULTI",
                "VADE_PHISHING",
            ]
            .map(String::from)
            .into(),
            virus_symbols: [
                "CLAM_VIRUS",
                "ESET_VIRUS",
                "AVAST_VIRUS",
                "KAS_VIRUS",
                "SOPHOS_VIRUS",
                "FPROT_VIRUS",
                "SAVAPI_VIRUS",
                "ICAP_VIRUS",
                "VADE_MALWARE",
            ]
            .map(String::from)
            .into(),
        }
    }
}

impl ScannerConfig {
    /// Whether a scanner is configured.
    pub fn is_enabled(&self) -> bool {
        self.url.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), Violation> {
        let fail = |key: &str, m: String| Err(Violation::new(0..0, key, m));
        if !(Duration::from_millis(100)..=MAX_TIMEOUT).contains(&self.timeout.0) {
            return fail(
                "scanner.timeout",
                "must be between 100ms and 30s: the MTA waits for the end of the message (Postfix's milter_content_timeout) and must get its answer first".into(),
            );
        }
        if !(1024..=MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return fail(
                "scanner.max_message_size",
                format!("must be between 1024 and {MAX_MESSAGE_SIZE} bytes (rspamd's own limit)"),
            );
        }
        for (i, action) in self.spam_actions.iter().enumerate() {
            if !RSPAMD_ACTIONS.contains(&action.as_str()) {
                return fail(
                    &format!("scanner.spam_actions[{i}]"),
                    format!(
                        "\"{action}\" is not an rspamd action; rspamd names them {}",
                        RSPAMD_ACTIONS.map(|a| format!("\"{a}\"")).join(", ")
                    ),
                );
            }
        }
        if self.spam_score.is_some_and(|s| !s.is_finite()) {
            return fail("scanner.spam_score", "must be a number".into());
        }
        for (key, symbols) in [
            ("scanner.phishing_symbols", &self.phishing_symbols),
            ("scanner.virus_symbols", &self.virus_symbols),
        ] {
            if let Some(bad) = symbols
                .iter()
                .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()))
            {
                return fail(
                    key,
                    format!("\"{bad}\" is not a symbol name (rspamd's are like \"PHISHING\")"),
                );
            }
        }
        Ok(())
    }
}

/// Where rspamd's normal worker listens: `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerUrl {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ScannerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for ScannerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let example = "write e.g. \"http://127.0.0.1:11333\" (rspamd's normal worker)";
        if s.starts_with("https://") {
            return Err(format!(
                "\"{s}\": TLS to the scanner is not built in; run rspamd on this host or the local network and use http://"
            ));
        }
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(format!("\"{s}\" is not an http:// URL: {example}"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "\"{s}\": only a host and a port, no path, user or query (egress-milter posts to /checkv2): {example}"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((host, port)) = v6.split_once("]:") else {
                return Err(format!("\"{s}\": give the host and the port, {example}"));
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, port),
                _ => return Err(format!("\"{s}\": give the host and the port, {example}")),
            }
        };
        let valid_host = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !valid_host {
            return Err(format!(
                "\"{s}\": only a host and a port, no path, user or query (egress-milter posts to /checkv2): {example}"
            ));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{s}\": the port must be a number from 1 to 65535"))?;
        Ok(ScannerUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for ScannerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_host_and_port() {
        let u: ScannerUrl = "http://127.0.0.1:11333".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 11333));
        assert_eq!(u.to_string(), "http://127.0.0.1:11333");
        let u: ScannerUrl = "http://[::1]:11333/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 11333));
        assert_eq!(u.to_string(), "http://[::1]:11333");
        assert!("http://rspamd.example.net:11333".parse::<ScannerUrl>().is_ok());
        for (bad, why) in [
            ("https://127.0.0.1:11333", "TLS"),
            ("127.0.0.1:11333", "not an http:// URL"),
            ("http://127.0.0.1", "host and the port"),
            ("http://127.0.0.1:0", "1 to 65535"),
            ("http://127.0.0.1:11333/checkv2", "no path"),
            ("http://u:p@127.0.0.1:11333", "no path, user"),
        ] {
            let e = bad.parse::<ScannerUrl>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn content_rules_need_a_scanner_and_a_scanner_wants_content_rules() {
        use crate::config::Config;
        use std::path::Path;
        let rule = "[[rule]]\nname = \"lock-spam\"\ncount = \"spam\"\nrate = \"5/10m\"\naction = \"lock\"\n";
        let e = Config::parse(rule, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rule[0].count"));
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("rule \"lock-spam\" counts \"spam\"") && e.message.contains("[scanner] url"),
            "{e}"
        );
        let scanner = "[scanner]\nurl = \"http://127.0.0.1:11333\"\ntimeout = \"2s\"\n";
        let both = Config::parse(&format!("{scanner}\n{rule}"), Path::new("t.toml")).unwrap();
        assert_eq!(both.scanner.timeout.0, Duration::from_secs(2));
        assert!(!both.warnings().iter().any(|w| w.contains("[scanner]")));
        let alone = Config::parse(scanner, Path::new("t.toml")).unwrap();
        assert!(
            alone
                .warnings()
                .iter()
                .any(|w| w.contains("no [[rule]] counts \"spam\"")),
            "{:?}",
            alone.warnings()
        );
        let e = Config::parse("[scanner]\nurl = \"https://h:1\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.message.contains("TLS"), "{e}");
    }

    #[test]
    fn the_defaults_are_valid_and_the_bounds_hold() {
        let d = ScannerConfig::default();
        assert!(!d.is_enabled());
        d.validate().unwrap();
        let bad = |c: ScannerConfig, key: &str| {
            let v = c.validate().unwrap_err();
            assert!(v.key.starts_with(key), "{v:?}");
            v.message
        };
        let slow = ScannerConfig {
            timeout: DurationValue(Duration::from_secs(31)),
            ..ScannerConfig::default()
        };
        assert!(bad(slow, "scanner.timeout").contains("milter_content_timeout"));
        let huge = ScannerConfig {
            max_message_size: MAX_MESSAGE_SIZE + 1,
            ..ScannerConfig::default()
        };
        bad(huge, "scanner.max_message_size");
        let typo = ScannerConfig {
            spam_actions: vec!["add_header".into()],
            ..ScannerConfig::default()
        };
        assert!(bad(typo, "scanner.spam_actions[0]").contains("\"add header\""));
        let nan = ScannerConfig {
            spam_score: Some(f64::NAN),
            ..ScannerConfig::default()
        };
        bad(nan, "scanner.spam_score");
        let space = ScannerConfig {
            virus_symbols: vec!["CLAM VIRUS".into()],
            ..ScannerConfig::default()
        };
        bad(space, "scanner.virus_symbols");
    }
}
