// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The configuration file: TOML read with serde, unknown keys refused, then
//! validated; every error names the file, the line and the key.

pub mod model;
pub mod notify;

pub use model::*;
pub use notify::NotifyConfig;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where the daemon and the CLI look for their configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = match option_env!("EGRESS_MILTER_CONFIG") {
    Some(path) => path,
    None => "/etc/egress-milter/egress-milter.toml",
};

/// A configuration that could not be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key \"{key}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration, validated.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen for the MTA, e.g. `inet:127.0.0.1:7025`.
    pub socket: SocketSpec,
    /// Permissions of a unix socket.
    pub socket_mode: FileMode,
    /// `enforce` or `dry-run`.
    pub mode: Mode,
    /// What to answer when the milter cannot decide.
    pub on_error: ErrorPolicy,
    pub log_format: LogFormat,
    /// A tracing filter directive such as `info` or `egress_milter=debug`.
    pub log_level: String,
    /// Largest number of simultaneous MTA connections.
    pub max_connections: usize,
    /// Re-arm `TCP_QUICKACK` after each read on TCP sockets (Linux), so an
    /// MTA that writes with Nagle on does not wait ~40 ms per message for
    /// our delayed ACK. Off only to measure that stall.
    pub tcp_quickack: bool,
    pub identity: IdentityConfig,
    pub limits: LimitsConfig,
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
    #[serde(rename = "override")]
    pub overrides: Vec<Spanned<OverrideConfig>>,
    pub locks: LocksConfig,
    pub replies: RepliesConfig,
    pub status: StatusConfig,
    /// Who is told about automatic locks; see docs/notifications.md.
    pub notify: NotifyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: SocketSpec::Inet(([127, 0, 0, 1], 7025).into()),
            socket_mode: FileMode(0o660),
            mode: Mode::Enforce,
            on_error: ErrorPolicy::Tempfail,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            max_connections: 500,
            tcp_quickack: true,
            identity: IdentityConfig::default(),
            limits: LimitsConfig::default(),
            rules: Vec::new(),
            overrides: Vec::new(),
            locks: LocksConfig::default(),
            replies: RepliesConfig::default(),
            status: StatusConfig::default(),
            notify: NotifyConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Tried in order; the first that yields a valid identity wins.
    pub sources: Spanned<Vec<IdentitySource>>,
    /// Clients whose identity headers are believed.
    pub trusted_networks: Vec<Network>,
    /// Also believe identity headers from SASL-authenticated sessions.
    pub trust_authenticated_headers: bool,
    /// Lowercase the local part too (the domain is always lowercased).
    pub lowercase_local_part: bool,
    /// Count `alice+news@example.com` as `alice@example.com`.
    pub fold_subaddress: bool,
    pub subaddress_separator: char,
    /// Longer identities are not believed (the next source is tried).
    pub max_length: usize,
    /// IPv6 clients are counted per network of this prefix length.
    pub client_ipv6_prefix: u8,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            sources: Spanned::new(0..0, vec![IdentitySource::Auth, IdentitySource::ClientAddress]),
            trusted_networks: Vec::new(),
            trust_authenticated_headers: false,
            lowercase_local_part: true,
            fold_subaddress: false,
            subaddress_separator: '+',
            max_length: 254,
            client_ipv6_prefix: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Hard cap on identities (and domains) with counters of their own.
    pub max_tracked_identities: usize,
    /// How often idle counters are forgotten.
    pub eviction_interval: DurationValue,
    /// Recipients beyond this number in one message are refused at RCPT.
    pub max_recipients_per_message: u32,
    /// Count bounces (null envelope sender) too.
    pub count_bounces: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_tracked_identities: 1_000_000,
            eviction_interval: DurationValue(Duration::from_secs(60)),
            max_recipients_per_message: 1000,
            count_bounces: false,
        }
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Spanned<String>,
    #[serde(default = "default_counted")]
    pub count: Counted,
    #[serde(default = "default_scope")]
    pub per: Scope,
    pub rate: Rate,
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
    pub action: Action,
}

fn default_counted() -> Counted {
    Counted::Messages
}

fn default_scope() -> Scope {
    Scope::Identity
}

/// One `[[override]]`: different limits for one identity or one domain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    /// No rule applies.
    #[serde(default)]
    pub exempt: bool,
    /// Rule name to the rate that replaces the rule's own.
    #[serde(default)]
    pub rates: BTreeMap<Spanned<String>, Rate>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocksConfig {
    /// The lock list: the single source of truth for locks.
    pub file: PathBuf,
    /// How often the file is checked for changes made by hand or by the CLI.
    pub poll_interval: DurationValue,
    /// How long automatic locks last; absent: until an admin removes them.
    pub auto_lock_duration: Option<DurationValue>,
    pub locked_action: LockedAction,
    /// Addresses a locked identity may still write to: a bare local part
    /// (`postmaster`) means that mailbox at the identity's own domain and at
    /// every domain of `local_domains`; a full address means itself.
    pub allow_recipients: Vec<String>,
    pub local_domains: Vec<String>,
    /// Pause between attempts when the lock list cannot be written.
    pub write_retry_interval: DurationValue,
}

impl Default for LocksConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("/var/lib/egress-milter/locks.toml"),
            poll_interval: DurationValue(Duration::from_secs(2)),
            auto_lock_duration: None,
            locked_action: LockedAction::Reject,
            allow_recipients: vec!["postmaster".into(), "abuse".into()],
            local_domains: Vec::new(),
            write_retry_interval: DurationValue(Duration::from_secs(5)),
        }
    }
}

/// `[status]`: the HTTP status listener (metrics, health, activity API).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Address to serve on, e.g. `127.0.0.1:7026`; absent: no listener,
    /// and no metrics or activity are kept.
    #[serde(deserialize_with = "listen_address")]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow a `listen` address other than loopback. The listener has no
    /// authentication and shows who sends what: keep it on loopback.
    pub allow_non_loopback: bool,
    /// Hard cap on identities in the activity registry.
    pub max_identities: usize,
    /// Largest number of simultaneous HTTP connections.
    pub max_connections: usize,
}

/// `status.listen`: an IP address and a port, with an error that says so.
fn listen_address<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(de)?;
    s.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not an IP address and port: write e.g. \"127.0.0.1:7026\" or \"[::1]:7026\" (no host names)"
        ))
    })
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen: None,
            allow_non_loopback: false,
            max_identities: 100_000,
            max_connections: 16,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepliesConfig {
    pub tempfail: Spanned<ReplySpec>,
    pub reject: Spanned<ReplySpec>,
    pub locked: Spanned<ReplySpec>,
    pub too_many_recipients: Spanned<ReplySpec>,
    pub error: Spanned<ReplySpec>,
}

impl Default for RepliesConfig {
    fn default() -> Self {
        let spanned = |r| Spanned::new(0..0, r);
        Self {
            tempfail: spanned(ReplySpec::new(
                "451",
                "4.7.1",
                "Rate limit \"{rule}\" exceeded for {identity}, retry in {retry}",
            )),
            reject: spanned(ReplySpec::new(
                "550",
                "5.7.1",
                "Rate limit \"{rule}\" exceeded for {identity}",
            )),
            locked: spanned(ReplySpec::new(
                "550",
                "5.7.1",
                "Sending as {identity} is suspended; please contact your postmaster",
            )),
            too_many_recipients: spanned(ReplySpec::new(
                "550",
                "5.5.3",
                "Too many recipients: at most {limit} per message",
            )),
            error: spanned(ReplySpec::new(
                "451",
                "4.3.0",
                "Temporary error in the sending policy, try again later",
            )),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, path)?;
        // Relative paths are relative to the configuration file.
        if config.locks.file.is_relative()
            && let Some(dir) = path.parent()
        {
            config.locks.file = dir.join(&config.locks.file);
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let error = |span: Option<Range<usize>>, key: Option<String>, message: String| ConfigError {
            file: path.to_owned(),
            line: span
                .map(|s| line_of(text, s.start))
                .or_else(|| key.as_deref().and_then(|k| line_of_key(text, k))),
            key,
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| error(e.span(), None, e.message().to_string()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned<T> fields show up as a serde-internal path segment.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let key = (path != ".").then_some(path);
            let inner = e.into_inner();
            error(inner.span(), key, inner.message().to_string())
        })?;
        config
            .validate()
            .map_err(|(span, key, message)| error(span, Some(key), message))?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self) -> Result<(), (Option<Range<usize>>, String, String)> {
        let fail = |span: Range<usize>, key: &str, message: String| {
            Err((Some(span).filter(|s| !s.is_empty()), key.to_string(), message))
        };

        let sources = &self.identity.sources;
        if sources.get_ref().is_empty() {
            return fail(
                sources.span(),
                "identity.sources",
                "at least one identity source is needed".into(),
            );
        }
        let mut seen = HashSet::new();
        for source in sources.get_ref() {
            if !seen.insert(source) {
                return fail(
                    sources.span(),
                    "identity.sources",
                    format!("\"{source}\" is listed twice"),
                );
            }
        }
        if !(16..=1024).contains(&self.identity.max_length) {
            return fail(0..0, "identity.max_length", "must be between 16 and 1024".into());
        }
        if !(16..=128).contains(&self.identity.client_ipv6_prefix) {
            return fail(0..0, "identity.client_ipv6_prefix", "must be between 16 and 128".into());
        }
        if self.max_connections == 0 {
            return fail(0..0, "max_connections", "must be at least 1".into());
        }
        if self.limits.max_tracked_identities == 0 {
            return fail(0..0, "limits.max_tracked_identities", "must be at least 1".into());
        }
        if let Some(addr) = self.status.listen
            && !addr.ip().is_loopback()
            && !self.status.allow_non_loopback
        {
            return fail(
                0..0,
                "status.listen",
                format!(
                    "{addr} is not a loopback address: the status listener has no authentication and shows who sends what; use 127.0.0.1 or ::1 (or set status.allow_non_loopback = true behind a firewall)"
                ),
            );
        }
        if self.status.max_identities == 0 {
            return fail(0..0, "status.max_identities", "must be at least 1".into());
        }
        if self.status.max_connections == 0 {
            return fail(0..0, "status.max_connections", "must be at least 1".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return fail(
                0..0,
                "log_level",
                format!("\"{}\" is not a valid log filter", self.log_level),
            );
        }

        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let name = rule.name.get_ref();
            let key = format!("rule[{i}].name");
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return fail(
                    rule.name.span(),
                    &key,
                    format!("\"{name}\" must be 1-64 letters, digits, '-', '_' or '.'"),
                );
            }
            if !names.insert(name.as_str()) {
                return fail(
                    rule.name.span(),
                    &key,
                    format!("a rule named \"{name}\" already exists"),
                );
            }
        }

        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(burst) = rule.burst
                && burst > rule.rate.count
            {
                return fail(
                    rule.name.span(),
                    &format!("rule[{i}].burst"),
                    format!(
                        "{burst} is more than the rate's count: at most {} can ever go out in {}",
                        rule.rate.count,
                        format_duration(rule.rate.window)
                    ),
                );
            }
            if rule.action == Action::Lock && rule.per != Scope::Identity {
                return fail(
                    rule.name.span(),
                    &format!("rule[{i}].per"),
                    "a lock rule must count per identity: a per-domain count would lock whichever sender crossed the domain's limit".into(),
                );
            }
        }

        let mut targets = HashSet::new();
        for (i, over) in self.overrides.iter().enumerate() {
            let span = over.span();
            let over = over.get_ref();
            let key = format!("override[{i}]");
            let target = match (&over.identity, &over.domain) {
                (Some(id), None) => format!(
                    "identity {}",
                    crate::identity::normalise_address(&self.identity, id.as_bytes())
                        .unwrap_or_else(|_| id.trim().to_lowercase())
                ),
                (None, Some(d)) => format!("domain {}", d.trim().trim_end_matches('.').to_lowercase()),
                _ => {
                    return fail(span, &key, "give exactly one of \"identity\" or \"domain\"".into());
                }
            };
            if !targets.insert(target.clone()) {
                return fail(span, &key, format!("{target} already has an override; merge the two"));
            }
            if over.exempt && !over.rates.is_empty() {
                return fail(span, &key, "an exempt override cannot also set rates".into());
            }
            if !over.exempt && over.rates.is_empty() {
                return fail(
                    span,
                    &key,
                    "set \"exempt = true\" or at least one entry in \"rates\"".into(),
                );
            }
            for rule_name in over.rates.keys() {
                let rate_key = format!("override[{i}].rates.{}", rule_name.get_ref());
                let Some(rule) = self.rules.iter().find(|r| r.name.get_ref() == rule_name.get_ref()) else {
                    return fail(
                        rule_name.span(),
                        &rate_key,
                        format!("there is no rule named \"{}\"", rule_name.get_ref()),
                    );
                };
                if over.identity.is_some() && rule.per == Scope::Domain {
                    return fail(
                        rule_name.span(),
                        &rate_key,
                        "an identity override cannot change a per-domain rule; use a domain override".into(),
                    );
                }
            }
        }

        let replies = &self.replies;
        for (name, reply, class) in [
            ("replies.tempfail", &replies.tempfail, 4),
            ("replies.reject", &replies.reject, 5),
            ("replies.locked", &replies.locked, 5),
            ("replies.too_many_recipients", &replies.too_many_recipients, 5),
            ("replies.error", &replies.error, 4),
        ] {
            if let Err(message) = reply.get_ref().check(class) {
                return fail(reply.span(), name, message);
            }
        }
        for (i, addr) in self.locks.allow_recipients.iter().enumerate() {
            if addr.is_empty() || addr.contains(char::is_whitespace) || addr.starts_with('@') {
                return fail(
                    0..0,
                    &format!("locks.allow_recipients[{i}]"),
                    format!("\"{addr}\" is not a local part or an address"),
                );
            }
        }
        for (i, domain) in self.locks.local_domains.iter().enumerate() {
            let d = domain.trim_end_matches('.');
            let label_ok = |l: &str| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
            };
            if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
                return fail(
                    0..0,
                    &format!("locks.local_domains[{i}]"),
                    format!("\"{domain}\" is not a domain name (write \"example.com\", without \"@\")"),
                );
            }
        }
        if let Err((span, key, message)) = self.notify.validate() {
            return fail(span, &key, message);
        }
        Ok(())
    }

    /// Warnings about a valid but probably unintended configuration.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let has_header = self
            .identity
            .sources
            .get_ref()
            .iter()
            .any(|s| matches!(s, IdentitySource::Header(_)));
        if has_header && self.identity.trusted_networks.is_empty() && !self.identity.trust_authenticated_headers {
            warnings.push(
                "identity.sources names a header, but no client is trusted to set it (identity.trusted_networks is empty)"
                    .to_string(),
            );
        }
        if self.rules.is_empty() {
            warnings.push("no [[rule]] is configured: only locks are enforced".to_string());
        }
        if self.mode == Mode::DryRun {
            warnings.push("mode is \"dry-run\": decisions are logged, nothing is refused, held or locked".to_string());
        }
        if let Some(program) = self.notify.argv().and_then(<[String]>::first)
            && !Path::new(program).is_file()
        {
            warnings.push(format!(
                "notify.command: \"{program}\" is not a file: lock notifications will fail to run it"
            ));
        }
        warnings
    }

    /// Parameters that only take effect at start, named when a reload changes them.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.socket != new.socket {
            changed.push("socket");
        }
        if self.socket_mode != new.socket_mode {
            changed.push("socket_mode");
        }
        if self.log_format != new.log_format {
            changed.push("log_format");
        }
        if self.log_level != new.log_level {
            changed.push("log_level");
        }
        if self.max_connections != new.max_connections {
            changed.push("max_connections");
        }
        if self.tcp_quickack != new.tcp_quickack {
            changed.push("tcp_quickack");
        }
        if self.locks.file != new.locks.file {
            changed.push("locks.file");
        }
        if self.locks.poll_interval != new.locks.poll_interval {
            changed.push("locks.poll_interval");
        }
        if self.locks.write_retry_interval != new.locks.write_retry_interval {
            changed.push("locks.write_retry_interval");
        }
        // New mail is resolved with the new normalisation at once, but the
        // lock list's identities stay normalised as at start.
        let (a, b) = (&self.identity, &new.identity);
        if a.lowercase_local_part != b.lowercase_local_part {
            changed.push("identity.lowercase_local_part (for the lock list)");
        }
        if a.fold_subaddress != b.fold_subaddress || a.subaddress_separator != b.subaddress_separator {
            changed.push("identity.fold_subaddress (for the lock list)");
        }
        if a.max_length != b.max_length {
            changed.push("identity.max_length (for the lock list)");
        }
        if self.status.max_connections != new.status.max_connections {
            changed.push("status.max_connections");
        }
        // The activity registry (recent queue ids in notifications) starts
        // with the daemon when [status] or [notify] is configured.
        let registry = |c: &Config| c.status.listen.is_some() || c.notify.is_enabled();
        if !registry(self) && registry(new) && new.status.listen == self.status.listen {
            changed.push("notify (recent queue ids in notifications)");
        }
        if self.status.listen != new.status.listen {
            changed.push("status.listen");
        }
        changed
    }
}

/// The line where a dotted key such as `identity.max_length` or
/// `locks.allow_recipients[0]` is set, for errors about values that carry no
/// position of their own: `leaf =` under the key's `[table]`, a dotted
/// `table.leaf =`, or `table = { leaf = ... }` on one line.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let key = key.split('[').next().unwrap_or(key);
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = dotted(header.trim_start_matches('[').split(']').next().unwrap_or(""));
            continue;
        }
        let Some((lhs, rhs)) = line.split_once('=') else {
            continue;
        };
        let lhs = dotted(lhs);
        let path = if current.is_empty() {
            lhs
        } else {
            format!("{current}.{lhs}")
        };
        // `table.key = ...`, `key = ...` under `[table]`, or
        // `table = { key = ... }` as an inline table on one line.
        let inline = key
            .strip_prefix(path.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
            && rhs.trim_start().starts_with('{')
            && rhs
                .split([',', '{'])
                .any(|kv| kv.split('=').next().is_some_and(|k| dotted(k) == leaf));
        if path == key || inline {
            return Some(n + 1);
        }
    }
    None
}

/// A TOML key path without blanks around the dots or quotes around parts.
fn dotted(key: &str) -> String {
    key.split('.')
        .map(|part| part.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(".")
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("config should be refused")
    }

    #[test]
    fn empty_config_is_the_documented_default() {
        let c = parse("").unwrap();
        assert_eq!(c.socket.to_string(), "inet:127.0.0.1:7025");
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(
            c.identity.sources.get_ref(),
            &[IdentitySource::Auth, IdentitySource::ClientAddress]
        );
        assert_eq!(c.locks.allow_recipients, ["postmaster", "abuse"]);
        assert!(c.rules.is_empty());
    }

    #[test]
    fn values_without_a_position_are_found_by_key() {
        let e = err("mode = \"enforce\"\n[identity]\n# max_length = 10\nmax_length = 10\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("identity.max_length")),
            "{e}"
        );
        let e = err("[locks]\nallow_recipients = [\"ok\", \"@bad\"]\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(parse("[locks]\nlocal_domains = [\"example.com\", \"xn--bcher-kva.example.\"]\n").is_ok());
        // The same error found for keys written the other ways TOML allows.
        let e = err("mode = \"enforce\"\nlocks.local_domains = [\"@x\"]\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("locks.local_domains[0]")),
            "{e}"
        );
        let e = err("mode = \"enforce\"\n\nlocks = { poll_interval = \"1s\", local_domains = [\"@x\"] }\n");
        assert_eq!(e.line, Some(3), "{e}");
        let e = err("[identity]\nmax_length = 8\n");
        assert_eq!(e.line, Some(2), "{e}");
        for bad in [
            "@example.com",
            "example..com",
            "",
            "exa mple.com",
            "postmaster@example.com",
        ] {
            let e = err(&format!("[locks]\nlocal_domains = [\"example.org\", \"{bad}\"]\n"));
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(2), Some("locks.local_domains[1]")),
                "{bad}: {e}"
            );
        }
        let e = err("log_level = \"egress_milter=shouting\"\n");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn error_keys_show_no_serde_internals() {
        let e = err("[identity]\nsources = [\"auth\", \"carrier-pigeon\"]\n");
        assert_eq!(e.key.as_deref(), Some("identity.sources[1]"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn lock_rules_count_per_identity_and_overrides_are_unique() {
        let e = err("[[rule]]\nname = \"d\"\nper = \"domain\"\nrate = \"9/1h\"\naction = \"lock\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("rule[0].per")), "{e}");
        let rule = "[[rule]]\nname = \"r\"\nrate = \"9/1h\"\naction = \"tempfail\"\n";
        let e = err(&format!(
            "{rule}[[override]]\ndomain = \"x.org\"\nexempt = true\n[[override]]\ndomain = \"X.org.\"\nrates = {{ r = \"1/1h\" }}\n"
        ));
        assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("override[1]")), "{e}");
        assert!(e.message.contains("domain x.org already has an override"), "{e}");
    }

    #[test]
    fn a_burst_may_not_exceed_the_rate() {
        let rule =
            |burst: u32| format!("[[rule]]\nname = \"r\"\nrate = \"300/1h\"\nburst = {burst}\naction = \"tempfail\"\n");
        let e = err(&rule(301));
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("rule[0].burst")), "{e}");
        assert_eq!(
            e.message,
            "301 is more than the rate's count: at most 300 can ever go out in 1h"
        );
        for ok in [1, 50, 300] {
            assert_eq!(parse(&rule(ok)).unwrap().rules[0].burst.map(|b| b.get()), Some(ok));
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = err("mode = \"enforce\"\n\n[limits]\nmax_trackd_identities = 5\n");
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("limits.max_trackd_identities"));
        assert!(e.message.contains("unknown field `max_trackd_identities`"), "{e}");
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let e = err(
            "[[rule]]\nname = \"a\"\nrate = \"30/1m\"\naction = \"tempfail\"\n\n[[rule]]\nname = \"b\"\nrate = \"30 per minute\"\naction = \"lock\"\n",
        );
        assert_eq!(e.line, Some(8), "{e}");
        assert_eq!(e.key.as_deref(), Some("rule[1].rate"));
        assert!(e.message.contains("invalid rate"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("test.toml: line 8: key \"rule[1].rate\": {}", e.message)
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let e = err("socket = \"inet:127.0.0.1:7025\"\nmode = enforce\n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn duplicate_rule_name_is_refused_at_its_line() {
        let e = err(
            "[[rule]]\nname = \"x\"\nrate = \"1/1m\"\naction = \"log\"\n[[rule]]\nname = \"x\"\nrate = \"1/1m\"\naction = \"log\"\n",
        );
        assert_eq!(e.line, Some(6));
        assert_eq!(e.key.as_deref(), Some("rule[1].name"));
    }

    #[test]
    fn override_must_name_existing_rules() {
        let e = err(
            "[[rule]]\nname = \"x\"\nrate = \"1/1m\"\naction = \"log\"\n[[override]]\nidentity = \"a@b\"\nrates = { y = \"5/1m\" }\n",
        );
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("no rule named \"y\""), "{e}");
        let e = err("[[override]]\nidentity = \"a@b\"\ndomain = \"b\"\nexempt = true\n");
        assert!(e.message.contains("exactly one"), "{e}");
        let e = err(
            "[[rule]]\nname = \"d\"\nper = \"domain\"\nrate = \"1/1m\"\naction = \"log\"\n[[override]]\nidentity = \"a@b\"\nrates = { d = \"5/1m\" }\n",
        );
        assert!(e.message.contains("per-domain"), "{e}");
    }

    #[test]
    fn reply_class_is_checked() {
        let e = err("[replies]\ntempfail = { code = \"550\", status = \"5.7.1\", text = \"no\" }\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("replies.tempfail"));
    }

    #[test]
    fn missing_file_is_reported() {
        let e = Config::read(Path::new("/nonexistent/egress.toml")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/egress.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn status_listener_stays_on_loopback_unless_allowed() {
        assert!(parse("").unwrap().status.listen.is_none());
        let c = parse("[status]\nlisten = \"[::1]:7026\"\n").unwrap();
        assert_eq!(c.status.listen.map(|a| a.port()), Some(7026));
        let e = err("[status]\nlisten = \"0.0.0.0:7026\"\n");
        assert_eq!(e.key.as_deref(), Some("status.listen"));
        assert!(e.message.contains("not a loopback address"), "{e}");
        let c = parse("[status]\nlisten = \"0.0.0.0:7026\"\nallow_non_loopback = true\n").unwrap();
        assert!(c.status.listen.is_some());
        let e = err("[status]\nlisten = \"localhost:7026\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("status.listen")), "{e}");
        assert!(e.message.contains("not an IP address and port"), "{e}");
        let e = err("[status]\nmax_identities = 0\n");
        assert_eq!(e.key.as_deref(), Some("status.max_identities"));
    }

    #[test]
    fn notify_is_off_by_default_and_checked_with_lines() {
        let c = parse("").unwrap();
        assert!(!c.notify.is_enabled());
        assert_eq!(c.notify.max_per_hour, 20);
        let c = parse("[notify]\ncommand = [\"/usr/local/sbin/on-lock\", \"--ticket\"]\nmail_to = [\"postmaster@example.com\"]\nmail_from = \"egress@example.com\"\n").unwrap();
        assert!(c.notify.is_enabled());
        assert_eq!(c.notify.argv().unwrap(), ["/usr/local/sbin/on-lock", "--ticket"]);
        assert_eq!(c.notify.smtp_relay.to_string(), "127.0.0.1:25");
        let e = err("mode = \"enforce\"\n[notify]\ncommand = [\"on-lock\"]\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("notify.command")), "{e}");
        assert!(e.message.contains("absolute path"), "{e}");
        let e = err("[notify]\nmail_to = [\"postmaster@example.com\"]\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("notify.mail_to")), "{e}");
        assert!(e.message.contains("notify.mail_from"), "{e}");
        let e = err("[notify]\nmail_to = [\"postmaster@example.com\"]\nsmtp_relay = \"localhost\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("notify.smtp_relay")), "{e}");
        let e = err("[notify]\nmail_to = [\"postmaster\"]\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[notify]\ncommand = [\"/bin/true\"]\nmax_per_hour = 0\n");
        assert_eq!(e.key.as_deref(), Some("notify.max_per_hour"), "{e}");
        let e = err("[notify]\ncomand = [\"/bin/true\"]\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("notify.comand")), "{e}");
    }

    #[test]
    fn restart_needed_names_changed_parameters() {
        let a = parse("").unwrap();
        let b = parse("socket = \"unix:/run/x.sock\"\nmode = \"dry-run\"\n").unwrap();
        assert_eq!(a.restart_needed(&b), ["socket"]);
        let c = parse("[status]\nmax_connections = 4\n").unwrap();
        assert_eq!(a.restart_needed(&c), ["status.max_connections"]);
        let d = parse("[notify]\ncommand = [\"/bin/true\"]\n").unwrap();
        assert_eq!(a.restart_needed(&d), ["notify (recent queue ids in notifications)"]);
        assert!(d.restart_needed(&a).is_empty());
    }
}
