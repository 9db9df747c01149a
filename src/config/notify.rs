// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The `[notify]` section: who is told when an identity is locked
//! automatically, by a command, by mail and by an abuse report (ARF).

use super::DurationValue;
use super::validate::Violation;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

/// `[notify]`: off unless `command`, `mail_to` or `arf_to` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Program and arguments run for each new automatic lock (no shell).
    pub command: Option<Spanned<Vec<String>>>,
    /// The command is killed (with its process group) after this long.
    pub command_timeout: DurationValue,
    /// Recipients of the lock report; empty: no mail.
    pub mail_to: Vec<MailAddress>,
    /// Header and envelope sender of the lock report.
    pub mail_from: Option<MailAddress>,
    /// Recipients of the RFC 5965 abuse report (ARF); empty: none is sent.
    pub arf_to: Vec<MailAddress>,
    /// Sender of the abuse report; default: `mail_from`.
    pub arf_from: Option<MailAddress>,
    /// The SMTP server the report is handed to (plain SMTP).
    pub smtp_relay: SmtpRelay,
    /// Longest wait for the relay's answer to any one command.
    pub smtp_timeout: DurationValue,
    /// At most this many notifications in any hour; the rest are logged only.
    pub max_per_hour: u32,
    /// The name this host gives itself in reports, EHLO and Message-ID;
    /// default: the kernel's host name.
    pub hostname: Option<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            command: None,
            command_timeout: DurationValue(Duration::from_secs(30)),
            mail_to: Vec::new(),
            mail_from: None,
            arf_to: Vec::new(),
            arf_from: None,
            smtp_relay: SmtpRelay {
                host: "127.0.0.1".into(),
                port: 25,
            },
            smtp_timeout: DurationValue(Duration::from_secs(30)),
            max_per_hour: 20,
            hostname: None,
        }
    }
}

impl NotifyConfig {
    /// Whether anything is to be notified at all.
    pub fn is_enabled(&self) -> bool {
        self.command.is_some() || !self.mail_to.is_empty() || self.arf_enabled()
    }

    /// Whether abuse reports are sent (and sample messages kept for them).
    pub fn arf_enabled(&self) -> bool {
        !self.arf_to.is_empty()
    }

    /// The sender of the abuse report: `arf_from`, else `mail_from`.
    pub fn arf_sender(&self) -> Option<&MailAddress> {
        self.arf_from.as_ref().or(self.mail_from.as_ref())
    }

    /// The command's program and arguments, if one is configured.
    pub fn argv(&self) -> Option<&[String]> {
        self.command.as_ref().map(|c| c.get_ref().as_slice())
    }

    /// `[notify]`: checks that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), Violation> {
        if let Some(command) = &self.command {
            let fail = |m: &str| Err(Violation::new(command.span(), "notify.command", m));
            match command.get_ref().first() {
                None => return fail("give the program and its arguments, e.g. [\"/usr/local/sbin/on-egress-lock\"]"),
                Some(p) if !p.starts_with('/') => {
                    return fail(&format!(
                        "the program \"{p}\" must be an absolute path (the command is run without a shell or PATH search)"
                    ));
                }
                _ => {}
            }
            if command.get_ref().iter().any(|a| a.contains('\0')) {
                return fail("arguments cannot contain NUL characters");
            }
        }
        if !self.mail_to.is_empty() && self.mail_from.is_none() {
            return Err(Violation::new(
                0..0,
                "notify.mail_to",
                "needs notify.mail_from too (the sender of the lock reports)",
            ));
        }
        if self.arf_enabled() && self.arf_sender().is_none() {
            return Err(Violation::new(
                0..0,
                "notify.arf_to",
                "needs notify.arf_from or notify.mail_from too (the sender of the abuse reports)",
            ));
        }
        if self.max_per_hour == 0 {
            return Err(Violation::new(
                0..0,
                "notify.max_per_hour",
                "must be at least 1 (remove notify.command, notify.mail_to and notify.arf_to to turn notifications off)",
            ));
        }
        if let Some(h) = &self.hostname {
            let valid =
                !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
            if !valid {
                return Err(Violation::new(
                    0..0,
                    "notify.hostname",
                    format!("\"{h}\" is not a host name (letters, digits, '-' and '.')"),
                ));
            }
        }
        Ok(())
    }
}

/// An address without angle brackets, e.g. `postmaster@example.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailAddress(pub String);

impl FromStr for MailAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = s.len() <= 254
            && s.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>\",;()".contains(c));
        if !ok {
            return Err("expected a plain address such as \"postmaster@example.com\"".into());
        }
        // The mail library must take it too, in headers and in SMTP.
        if let Err(e) = s.parse::<lettre::Address>() {
            return Err(format!("not usable in mail: {e}"));
        }
        Ok(MailAddress(s.to_string()))
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MailAddress {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid address \"{s}\": {e}")))
    }
}

/// `HOST:PORT` of an SMTP server: `127.0.0.1:25`, `[::1]:25`, `mail.example.com:25`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpRelay {
    pub host: String,
    pub port: u16,
}

impl FromStr for SmtpRelay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected HOST:PORT, e.g. \"127.0.0.1:25\" or \"[::1]:25\"";
        let (host, port) = s.rsplit_once(':').ok_or(expected)?;
        let port: u16 = port.parse().map_err(|_| expected)?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or(expected)?,
            None if host.contains(':') => return Err(expected.into()),
            None => host,
        };
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(expected.into());
        }
        Ok(SmtpRelay {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for SmtpRelay {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid relay \"{s}\": {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_forms() {
        let r: SmtpRelay = "127.0.0.1:25".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 25));
        let r: SmtpRelay = "[::1]:2525".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 2525));
        assert_eq!(r.to_string(), "[::1]:2525");
        assert_eq!(
            "mail.example.com:25".parse::<SmtpRelay>().unwrap().host,
            "mail.example.com"
        );
        for bad in ["127.0.0.1", "::1:25", "host:0", ":25", "host:x", "[::1:25"] {
            assert!(bad.parse::<SmtpRelay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!("postmaster@example.com".parse::<MailAddress>().is_ok());
        for bad in ["postmaster", "<a@b>", "a b@c", "@b", "a@", "a@b\r\nRCPT TO:<x@y>"] {
            assert!(bad.parse::<MailAddress>().is_err(), "{bad:?}");
        }
    }
}
