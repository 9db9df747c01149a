// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The configuration file: TOML read with serde, unknown keys refused, then
//! validated; every error names the file, the line and the key.

pub mod address;
pub mod escalation;
pub mod model;
pub mod notify;
pub mod scanner;
pub mod secret;
pub mod validate;

pub use model::*;
pub use notify::NotifyConfig;
pub use scanner::{ScannerConfig, ScannerUrl};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
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

/// The default `idle_timeout`: twice Postfix's `smtpd_timeout` (300 s),
/// the longest Postfix waits for one command of the client. Between two
/// milter commands outside DATA an honest session is silent for one such
/// wait, plus the MTA's own work (DNS, policy lookups, the milters before
/// this one), so twice that is only reached by a session that is abandoned
/// or held open on purpose. See docs/configuration.md, idle_timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The default `data_idle_timeout`: an hour, a 10 MB message (Postfix's
/// default `message_size_limit`) at 2.8 KB/s, and Sendmail's
/// `Timeout.command`. Postfix bounds the upload only per read
/// (`smtpd_timeout`), not as a whole.
pub const DEFAULT_DATA_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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
    /// What to answer to a stage on a connection that was never negotiated.
    pub on_error: ErrorPolicy,
    pub log_format: LogFormat,
    /// A tracing filter directive such as `info` or `egress_milter=debug`.
    pub log_level: String,
    /// Largest number of simultaneous MTA connections.
    pub max_connections: usize,
    /// How long the MTA may take to negotiate once a session starts, to
    /// finish a packet it has begun, and to read a reply of ours.
    pub read_timeout: DurationValue,
    /// How long a negotiated connection may go without a packet between
    /// SMTP commands, outside a message's DATA phase.
    pub idle_timeout: DurationValue,
    /// The same from DATA to the end of the message, while the client
    /// uploads it (the MTA sends the headers and body only at its end);
    /// `None`: [`DEFAULT_DATA_IDLE_TIMEOUT`], or `idle_timeout` if longer.
    /// Read it with [`Config::data_idle_timeout`].
    pub data_idle_timeout: Option<DurationValue>,
    /// Re-arm `TCP_QUICKACK` after each read on TCP sockets (Linux), so an
    /// MTA that writes with Nagle on does not wait ~40 ms per message for
    /// our delayed ACK. Off only to measure that stall.
    pub tcp_quickack: bool,
    pub identity: IdentityConfig,
    /// Which mail the rules apply to.
    pub scope: ScopeConfig,
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
    /// Where counters live: in memory, or on Redis for a fleet (docs/fleet.md).
    pub store: StoreConfig,
    /// The content scanner asked for the `spam`, `phishing` and `virus`
    /// rules (docs/detection.md); off while its `url` is unset.
    pub scanner: ScannerConfig,
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
            read_timeout: DurationValue(Duration::from_secs(10)),
            idle_timeout: DurationValue(DEFAULT_IDLE_TIMEOUT),
            data_idle_timeout: None,
            tcp_quickack: true,
            identity: IdentityConfig::default(),
            scope: ScopeConfig::default(),
            limits: LimitsConfig::default(),
            rules: Vec::new(),
            overrides: Vec::new(),
            locks: LocksConfig::default(),
            replies: RepliesConfig::default(),
            status: StatusConfig::default(),
            notify: NotifyConfig::default(),
            store: StoreConfig::default(),
            scanner: ScannerConfig::default(),
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
    /// No longer supported (it let every SASL user choose its identity):
    /// refused by validation in favour of `header_logins`.
    pub trust_authenticated_headers: bool,
    /// SASL logins (a webmail's or a relay's own account) whose sessions may
    /// stamp the identity header; their own traffic is counted too.
    pub header_logins: Vec<String>,
    /// The realms (domains) that the SASL user database accepts after a
    /// login's `@` for the same account as the bare login: `alice`,
    /// `alice@example.com` and `alice@mail.example.com` are one account
    /// when both domains are listed. Every identity (login, header,
    /// envelope sender, lock, override) in one of them is counted in the
    /// realm of `default_realm`, or bare when that is unset. Lowercase,
    /// without a trailing dot, once parsed.
    pub local_realms: Vec<String>,
    /// The realm of an account's one identity: a bare login gets it, and an
    /// identity in any of `local_realms` is rewritten to it. Unset: the
    /// identity is the bare login. Lowercase, without a trailing dot, once
    /// parsed.
    pub default_realm: Option<String>,
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

impl IdentityConfig {
    /// Writes `local_realms` and `default_realm` in the form identities are
    /// compared in (see [`address::domain_key`]).
    pub fn normalise_realms(&mut self) {
        for realm in &mut self.local_realms {
            *realm = address::domain_key(realm);
        }
        if let Some(realm) = &mut self.default_realm {
            *realm = address::domain_key(realm);
        }
    }

    /// Whether `domain` (normalised) is a realm of the site's own accounts.
    pub fn is_local_realm(&self, domain: &str) -> bool {
        self.default_realm.as_deref() == Some(domain) || self.local_realms.iter().any(|r| r == domain)
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            sources: Spanned::new(0..0, vec![IdentitySource::Auth, IdentitySource::ClientAddress]),
            trusted_networks: Vec::new(),
            trust_authenticated_headers: false,
            header_logins: Vec::new(),
            local_realms: Vec::new(),
            default_realm: None,
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
    /// Recipients beyond this number in one message are refused at RCPT
    /// (0: no cap). 100 is what RFC 5321 (4.5.3.1.8) obliges every server
    /// to accept, so no compliant client needs more in one transaction.
    pub max_recipients_per_message: u32,
    /// Count null-sender mail from the local-submission door too (it is
    /// always counted when it comes from a SASL login, an identity header or
    /// a client in `[scope] networks`).
    pub count_bounces: bool,
    /// Accepted messages remembered (queue id and identity) so that the
    /// MTA's bounces can be charged to the identity that sent the mail.
    pub max_tracked_messages: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_tracked_identities: 1_000_000,
            eviction_interval: DurationValue(Duration::from_secs(60)),
            max_recipients_per_message: 100,
            count_bounces: false,
            max_tracked_messages: 200_000,
        }
    }
}

/// `[scope]`: which mail is outbound, and so subject to the rules. Any
/// other mail passes untouched (counted in a metric only).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// SASL-authenticated sessions.
    pub authenticated: bool,
    /// Mail submitted on the MTA host with the sendmail command (Postfix's
    /// non-SMTP path, which milters see as 127.0.0.1 port 0).
    pub local: bool,
    /// Clients whose mail is outbound: web servers, relays, the networks of
    /// Postfix's `mynetworks` that send out; loopback by default.
    /// `identity.trusted_networks` are always in scope.
    pub networks: Vec<Network>,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        Self {
            authenticated: true,
            local: true,
            // Programs on this host that relay through port 25 without a
            // login: Postfix's default mynetworks for a host. Any process
            // can pick any 127.x source address, so all of it.
            networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
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
    /// Count as the action says, but only log what it would do.
    #[serde(default)]
    pub dry_run: bool,
    /// Bounces only: act only when the bounces are at least this share of
    /// the recipients the identity's accepted mail had in the window.
    #[serde(default)]
    pub min_ratio: Option<Ratio>,
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
    /// Domains the identity (or every identity of the domain) may send as,
    /// besides its own (and its subdomains): `foreign-senders` rules do not
    /// count them. `"*"`: any.
    #[serde(default)]
    pub sender_domains: Vec<String>,
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
    /// With `locked_action = "hold"`: at most this many messages of one
    /// locked identity are held per window; the rest are refused.
    pub hold_limit: Rate,
}

impl Default for LocksConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("/var/lib/egress-milter/locks.toml"),
            poll_interval: DurationValue(Duration::from_millis(250)),
            auto_lock_duration: None,
            locked_action: LockedAction::Reject,
            allow_recipients: vec!["postmaster".into(), "abuse".into()],
            local_domains: Vec::new(),
            write_retry_interval: DurationValue(Duration::from_secs(5)),
            hold_limit: Rate {
                count: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
                window: Duration::from_secs(3600),
            },
        }
    }
}

/// `[store]`: where counters (and, in a fleet, locks) are kept.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `redis://[user:password@]host:port/db` or `unix:///path/redis.sock`;
    /// ignored with `sentinels`.
    pub url: String,
    /// With Sentinel: the master's name, and the Sentinels to ask for it.
    pub sentinel_master: Option<String>,
    pub sentinels: Vec<String>,
    /// For the master found through Sentinel: its ACL user, password and
    /// database (a `url` carries its own).
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: i64,
    /// Every key egress-milter writes starts with it.
    pub prefix: String,
    /// The longest a decision waits for Redis; then it uses local counters.
    pub timeout: DurationValue,
    /// While Redis is unavailable, how often it is tried again.
    pub retry_interval: DurationValue,
    /// Hosts sharing the counters: while Redis is unavailable each host
    /// allows a rule's count divided by this (at least 1).
    pub fleet_size: u32,
    /// Memory backend: where the counters are saved at a clean stop and
    /// read back at start; absent: `counters.state` beside `locks.file`
    /// (see [`Config::state_file`]).
    pub state_file: Option<PathBuf>,
    /// Memory backend: a saved state older than this is ignored at start.
    pub state_max_age: DurationValue,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            url: "redis://127.0.0.1:6379/0".into(),
            sentinel_master: None,
            sentinels: Vec::new(),
            username: None,
            password: None,
            database: 0,
            prefix: "egress-milter:".into(),
            timeout: DurationValue(Duration::from_millis(200)),
            retry_interval: DurationValue(Duration::from_secs(1)),
            fleet_size: 1,
            state_file: None,
            state_max_age: DurationValue(Duration::from_secs(86_400)),
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
    /// The review desk's users: `name:$argon2id$...` lines, as
    /// `egress-milter passwd NAME` prints them. Absent: no one logs in with
    /// a password (the local token and a trusted proxy still work).
    pub users_file: Option<PathBuf>,
    /// Where the daemon writes, at start, the random token that the CLI on
    /// this host sends (`top`, `explain`, `report`, `reset`): readable only
    /// by the daemon's user and root. Default: `status.token` beside the
    /// lock list.
    pub token_file: Option<PathBuf>,
    /// Reverse proxies (exact addresses) whose `proxy_user_header` names
    /// the logged-in user. Empty: the header is ignored. An address of
    /// this host (loopback included) only with `proxy_secret_file`: any
    /// local user can connect from it.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The header a trusted proxy sets to the user it authenticated.
    pub proxy_user_header: String,
    /// A file (not open to other users) holding the secret a trusted proxy
    /// must send in `proxy_secret_header` for its user header to be
    /// believed. Read at start and at each reload.
    pub proxy_secret_file: Option<PathBuf>,
    /// The header the proxy sends the secret in.
    pub proxy_secret_header: String,
    /// The secret of `proxy_secret_file`, read by
    /// [`Config::read_with_secrets`] (never part of the file's text); while
    /// it is `None` with `proxy_secret_file` set, no proxy is believed.
    #[serde(skip)]
    pub proxy_secret: Option<secret::Secret>,
    /// The origin browsers see the desk at behind a proxy, e.g.
    /// `"https://mail-desk.example.com"`; state-changing requests must come
    /// from it. Absent: the origin of the request's `Host`.
    pub public_origin: Option<String>,
    /// How long a login lasts.
    pub session_lifetime: DurationValue,
}

impl StatusConfig {
    /// The local token's file: `token_file`, or `status.token` beside `lock_list`.
    pub fn token_path(&self, lock_list: &std::path::Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| lock_list.with_file_name("status.token"))
    }
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
            users_file: None,
            token_file: None,
            trusted_proxies: Vec::new(),
            proxy_user_header: "X-Remote-User".into(),
            proxy_secret_file: None,
            proxy_secret_header: "X-Egress-Proxy-Secret".into(),
            proxy_secret: None,
            public_origin: None,
            session_lifetime: DurationValue(std::time::Duration::from_secs(8 * 3600)),
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
    /// Reads and validates a configuration file. The secrets it names are
    /// not read (see [`Config::read_with_secrets`]): the admin commands
    /// that need none work for users who may not read them.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        Self::read_text(path).map(|(config, _)| config)
    }

    /// [`Config::read`], then the secrets the file names
    /// (`status.proxy_secret_file`): what the daemon runs with, read at
    /// start and at each reload, and what `check-config` checks. A secret
    /// that cannot be used is an error of its key, as a bad value is.
    pub fn read_with_secrets(path: &Path) -> Result<Config, ConfigError> {
        let (mut config, text) = Self::read_text(path)?;
        if let Some(file) = &config.status.proxy_secret_file {
            let key = "status.proxy_secret_file";
            let secret = secret::read_secret_file(file).map_err(|message| ConfigError {
                file: path.to_owned(),
                line: line_of_key(&text, key),
                key: Some(key.into()),
                message,
            })?;
            config.status.proxy_secret = Some(secret);
        }
        Ok(config)
    }

    fn read_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, path)?;
        // Relative paths are relative to the configuration file.
        if let Some(dir) = path.parent() {
            if config.locks.file.is_relative() {
                config.locks.file = dir.join(&config.locks.file);
            }
            if let Some(state) = config.store.state_file.as_mut()
                && state.is_relative()
            {
                *state = dir.join(&*state);
            }
            if let Some(secret) = config.status.proxy_secret_file.as_mut()
                && secret.is_relative()
            {
                *secret = dir.join(&*secret);
            }
        }
        Ok((config, text))
    }

    /// How long a negotiated connection may be silent from DATA to the end
    /// of the message: `data_idle_timeout`, by default an hour or
    /// `idle_timeout` if that is longer.
    pub fn data_idle_timeout(&self) -> Duration {
        match self.data_idle_timeout {
            Some(d) => d.0,
            None => DEFAULT_DATA_IDLE_TIMEOUT.max(self.idle_timeout.0),
        }
    }

    /// Where the memory backend saves its counters: `store.state_file`, or
    /// `counters.state` in the directory of the lock list, which the daemon
    /// already needs to be able to write.
    pub fn state_file(&self) -> PathBuf {
        match &self.store.state_file {
            Some(path) => path.clone(),
            None => self.locks.file.with_file_name("counters.state"),
        }
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
        validate::validate(&config).map_err(|v| error(v.span, Some(v.key), v.message))?;
        let mut config = config;
        config.identity.normalise_realms();
        Ok(config)
    }

    /// Where an identity header could be believed from someone other than
    /// the relays and logins the admin meant: a SASL session is believed
    /// by its login alone (`header_logins`), a session without a login by
    /// its address (`trusted_networks`).
    fn header_trust_warnings(&self) -> Vec<String> {
        let identity = &self.identity;
        let sources = identity.sources.get_ref();
        let first_header = sources.iter().position(|s| matches!(s, IdentitySource::Header(_)));
        let mut warnings = Vec::new();
        let Some(first_header) = first_header else {
            if !identity.header_logins.is_empty() {
                warnings.push(
                    "identity.header_logins is set, but identity.sources names no \"header:NAME\" source: those logins are counted as themselves"
                        .to_string(),
                );
            }
            return warnings;
        };
        let auth = sources.iter().position(|s| *s == IdentitySource::Auth);
        if !identity.header_logins.is_empty() && auth.is_some_and(|a| a < first_header) {
            warnings.push(
                "identity.header_logins names logins that may stamp the identity header, but \"auth\" comes before every header source in identity.sources: their sessions are decided by the login at MAIL and the header is never read; put the header source first (docs/configuration.md, header_logins)"
                    .to_string(),
            );
        }
        let loopback = |n: &Network| {
            n.0.contains(&IpAddr::from([127, 0, 0, 1]))
                || n.0.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
                || matches!(n.0.network(), IpAddr::V4(a) if a.is_loopback())
        };
        if let Some(net) = identity.trusted_networks.iter().find(|n| loopback(n)) {
            warnings.push(format!(
                "identity.trusted_networks includes {}, a loopback address: every program on this host can connect to the MTA from it without logging in and stamp the identity header, choosing whom its mail is counted (and locked) as; trust a webmail on this host by its SASL login (identity.header_logins) instead",
                net.0
            ));
        }
        warnings
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
        if has_header && self.identity.trusted_networks.is_empty() && self.identity.header_logins.is_empty() {
            warnings.push(
                "identity.sources names a header, but no client is trusted to set it (identity.trusted_networks and identity.header_logins are empty)"
                    .to_string(),
            );
        }
        let sources = self.identity.sources.get_ref();
        let position = |wanted: &IdentitySource| sources.iter().position(|s| s == wanted);
        warnings.extend(self.header_trust_warnings());
        warnings.extend(escalation::gaps(self).iter().map(ToString::to_string));
        let local_user = position(&IdentitySource::LocalUser);
        let php_script = position(&IdentitySource::PhpScript);
        if (local_user.is_some() || php_script.is_some()) && !self.scope.local {
            warnings.push(
                "identity.sources names \"local-user\" or \"php-script\", but [scope] local = false: local submissions pass untouched, so neither ever applies"
                    .to_string(),
            );
        }
        if let (Some(user), Some(script)) = (local_user, php_script)
            && script > user
        {
            warnings.push(
                "identity.sources: \"php-script\" after \"local-user\" is never reached (every message with a script header has a user); put it first"
                    .to_string(),
            );
        }
        let bounce_rules = self.rules.iter().any(|r| r.count == Counted::Bounces);
        if bounce_rules && local_user.is_none() && php_script.is_none() {
            warnings.push(
                "a rule counts \"bounces\", but identity.sources names neither \"local-user\" nor \"php-script\": without the pickup stamp (docs/postfix.md) the MTA's bounces cannot be told from a local user's null-sender mail, so none is read and the bounce rules never act"
                    .to_string(),
            );
        }
        if self.scanner.is_enabled() && !self.rules.iter().any(|r| r.count.is_content()) {
            warnings.push(
                "[scanner] url is set, but no [[rule]] counts \"spam\", \"phishing\" or \"virus\": no message is scanned"
                    .to_string(),
            );
        }
        if self.idle_timeout.0 < Duration::from_secs(300) {
            warnings.push(format!(
                "idle_timeout (\"{}\") is shorter than Postfix's smtpd_timeout (300s by default): SMTP sessions that pause between commands are cut and get milter_default_action",
                format_duration(self.idle_timeout.0)
            ));
        }
        if self.rules.is_empty() {
            warnings.push("no [[rule]] is configured: only locks are enforced".to_string());
        }
        if self.status.proxy_secret_file.is_some() && self.status.trusted_proxies.is_empty() {
            warnings.push(
                "status.proxy_secret_file is set, but status.trusted_proxies is empty: no proxy's user header is believed"
                    .to_string(),
            );
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
        if self.read_timeout != new.read_timeout {
            changed.push("read_timeout");
        }
        if self.idle_timeout != new.idle_timeout {
            changed.push("idle_timeout");
        }
        if self.data_idle_timeout() != new.data_idle_timeout() {
            changed.push("data_idle_timeout");
        }
        if self.locks.file != new.locks.file {
            changed.push("locks.file");
        }
        if self.store.backend != new.store.backend {
            changed.push("store.backend");
        }
        // Read at start and written at stop: the stop after a change still
        // saves where the running daemon restored from.
        if self.state_file() != new.state_file() {
            changed.push("store.state_file");
        }
        if self.locks.poll_interval != new.locks.poll_interval {
            changed.push("locks.poll_interval");
        }
        if self.locks.write_retry_interval != new.locks.write_retry_interval {
            changed.push("locks.write_retry_interval");
        }
        if self.status.max_connections != new.status.max_connections {
            changed.push("status.max_connections");
        }
        // The Redis settings (backend and state file are named above).
        let redis = |c: &Config| StoreConfig {
            backend: StoreBackend::Memory,
            state_file: None,
            state_max_age: DurationValue(Duration::ZERO),
            ..c.store.clone()
        };
        if redis(self) != redis(new) {
            changed.push("store (Redis settings)");
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

    /// Issue 18: a proxy on this host is any local process unless it
    /// proves itself with a secret.
    #[test]
    fn a_trusted_proxy_on_this_host_needs_a_secret() {
        let c = parse("").unwrap();
        assert_eq!(c.status.proxy_secret_header, "X-Egress-Proxy-Secret");
        assert!(c.status.proxy_secret_file.is_none() && c.status.proxy_secret.is_none());
        for local in ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.2", "0.0.0.0", "::"] {
            let e = err(&format!(
                "mode = \"enforce\"\n[status]\nlisten = \"127.0.0.1:7026\"\ntrusted_proxies = [\"192.0.2.1\", \"{local}\"]\n"
            ));
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(4), Some("status.trusted_proxies[1]")),
                "{local}: {e}"
            );
            assert!(e.message.starts_with(&format!("{local} is a")), "{e}");
            assert!(
                e.message.contains(
                    "set status.proxy_secret_file to a secret only the proxy sends (in X-Egress-Proxy-Secret)"
                ),
                "{e}"
            );
            let with_secret = format!(
                "[status]\ntrusted_proxies = [\"{local}\"]\nproxy_secret_file = \"/etc/egress-milter/proxy.secret\"\n"
            );
            assert!(parse(&with_secret).is_ok(), "{local}");
        }
        // A non-loopback address of this host, if it has one with a route.
        let own = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        if let Some(own) = own {
            let e = err(&format!("[status]\ntrusted_proxies = [\"{own}\"]\n"));
            assert!(
                e.message.starts_with(&format!("{own} is an address of this host")),
                "{e}"
            );
        }
        // Another host's proxy may still go without (the old behaviour).
        assert!(parse("[status]\ntrusted_proxies = [\"192.0.2.1\", \"2001:db8::1\"]\n").is_ok());
        let e = err("[status]\nproxy_secret_header = \"X Secret\"\n");
        assert_eq!(e.key.as_deref(), Some("status.proxy_secret_header"), "{e}");
        let e = err("[status]\nproxy_secret_header = \"x-remote-user\"\n");
        assert!(e.message.contains("must differ from status.proxy_user_header"), "{e}");
        let warned = parse("[status]\nproxy_secret_file = \"/etc/egress-milter/proxy.secret\"\n").unwrap();
        assert!(
            warned
                .warnings()
                .iter()
                .any(|w| w.contains("status.trusted_proxies is empty"))
        );
    }

    #[test]
    fn the_proxy_secret_is_read_beside_the_config_and_refused_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "[status]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_secret_file = \"proxy.secret\"\n",
        )
        .unwrap();
        let secret = dir.path().join("proxy.secret");
        let hex = "ab".repeat(32);
        std::fs::write(&secret, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Config::read leaves it alone; the daemon's read takes it.
        let c = Config::read(&path).unwrap();
        assert_eq!(c.status.proxy_secret_file.as_deref(), Some(secret.as_path()));
        assert!(c.status.proxy_secret.is_none());
        let c = Config::read_with_secrets(&path).unwrap();
        assert_eq!(c.status.proxy_secret.as_ref().map(|s| s.expose()), Some(hex.as_str()));
        assert!(!format!("{c:?}").contains(&hex));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::read_with_secrets(&path).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("status.proxy_secret_file")),
            "{e}"
        );
        assert!(
            e.to_string().contains(&format!(
                "{} has permissions for other users (mode 0644)",
                secret.display()
            )),
            "{e}"
        );
        assert!(Config::read(&path).is_ok(), "the other commands need no secret");
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

    #[test]
    fn header_trust_that_others_could_borrow_is_warned_about() {
        let warned = |text: &str, needle: &str| parse(text).unwrap().warnings().iter().any(|w| w.contains(needle));
        let webmail = "[identity]\nsources = [\"header:X-Authenticated-Sender\", \"auth\", \"client-address\"]\nheader_logins = [\"webmail@example.com\"]\n";
        assert!(
            parse(webmail)
                .unwrap()
                .warnings()
                .iter()
                .all(|w| !w.contains("identity"))
        );
        // Loopback: every local program can connect from it.
        for net in ["127.0.0.0/8", "127.0.0.2", "::1"] {
            let text = format!("{webmail}trusted_networks = [\"{net}\"]\n");
            assert!(warned(&text, "loopback"), "{net}");
        }
        assert!(!warned(
            &format!("{webmail}trusted_networks = [\"192.0.2.25\"]\n"),
            "loopback"
        ));
        // The header after "auth": the header logins never stamp.
        let late = "[identity]\nsources = [\"auth\", \"header:X-Authenticated-Sender\"]\nheader_logins = [\"webmail@example.com\"]\n";
        assert!(warned(late, "comes before every header source"));
        // Header logins without a header source.
        assert!(warned(
            "[identity]\nheader_logins = [\"webmail@example.com\"]\n",
            "names no \"header:NAME\" source"
        ));
    }

    #[test]
    fn realms_are_domains_and_are_compared_normalised() {
        let c = parse("[identity]\nlocal_realms = [\"Mail.Example.COM.\"]\ndefault_realm = \"Example.com\"\n").unwrap();
        assert_eq!(c.identity.local_realms, ["mail.example.com"]);
        assert_eq!(c.identity.default_realm.as_deref(), Some("example.com"));
        assert_eq!(
            address::lock_key(&c.identity, "ALICE@mail.example.com"),
            "alice@example.com"
        );
        for (text, key) in [
            ("local_realms = [\"a b\"]", "identity.local_realms[0]"),
            ("local_realms = [\"\"]", "identity.local_realms[0]"),
            ("default_realm = \"@example.com\"", "identity.default_realm"),
        ] {
            let e = err(&format!("[identity]\n{text}\n"));
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.message.contains("is not a domain"), "{e}");
        }
    }

    #[test]
    fn local_sources_are_warned_about_when_they_cannot_apply() {
        let warned = |text: &str, needle: &str| parse(text).unwrap().warnings().iter().any(|w| w.contains(needle));
        let ok = "[identity]\nsources = [\"auth\", \"php-script\", \"local-user\", \"client-address\"]\n";
        assert!(!warned(ok, "local-user"));
        assert!(warned(
            &format!("{ok}[scope]\nlocal = false\n"),
            "[scope] local = false"
        ));
        assert!(warned(
            "[identity]\nsources = [\"local-user\", \"php-script\"]\n",
            "never reached"
        ));
    }

    #[test]
    fn connection_timeouts_are_bounded_warned_about_and_need_a_restart() {
        let a = parse("").unwrap();
        assert_eq!(a.read_timeout.0, Duration::from_secs(10));
        assert_eq!(a.idle_timeout.0, Duration::from_secs(600));
        assert_eq!(a.data_idle_timeout(), Duration::from_secs(3600));
        assert!(!a.warnings().iter().any(|w| w.contains("idle_timeout")));
        let b = parse("read_timeout = \"20s\"\nidle_timeout = \"2m\"\n").unwrap();
        assert_eq!(a.restart_needed(&b), ["read_timeout", "idle_timeout"]);
        assert_eq!(b.data_idle_timeout(), Duration::from_secs(3600));
        // An idle_timeout longer than the hour is the DATA phase's too, as
        // before data_idle_timeout existed.
        let long = parse("idle_timeout = \"2h\"\n").unwrap();
        assert_eq!(long.data_idle_timeout(), Duration::from_secs(7200));
        assert_eq!(a.restart_needed(&long), ["idle_timeout", "data_idle_timeout"]);
        let data = parse("data_idle_timeout = \"3h\"\n").unwrap();
        assert_eq!(data.data_idle_timeout(), Duration::from_secs(3 * 3600));
        assert_eq!(a.restart_needed(&data), ["data_idle_timeout"]);
        let e = err("idle_timeout = \"20m\"\ndata_idle_timeout = \"15m\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("data_idle_timeout")), "{e}");
        assert!(e.message.starts_with("must be at least idle_timeout (\"20m\")"), "{e}");
        assert!(
            err("data_idle_timeout = \"8d\"\n")
                .message
                .contains("between 1s and 7d")
        );
        assert!(
            b.warnings()
                .iter()
                .any(|w| w.starts_with("idle_timeout (\"2m\") is shorter than Postfix's smtpd_timeout")),
            "{:?}",
            b.warnings()
        );
        let e = err("read_timeout = \"11m\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("read_timeout")), "{e}");
        assert_eq!(e.message, "must be between 1s and 10m");
        let e = err("idle_timeout = \"8d\"\n");
        assert_eq!(e.message, "must be between 1s and 7d");
        assert!(err("idle_timeout = \"500ms\"\n").message.contains("between 1s and 7d"));
    }

    #[test]
    fn the_store_keeps_counters_in_memory_beside_the_lock_list_by_default() {
        let c = parse("[locks]\nfile = \"/var/lib/em/locks.toml\"\n").unwrap();
        assert_eq!(c.store.backend, StoreBackend::Memory);
        assert_eq!(c.state_file(), Path::new("/var/lib/em/counters.state"));
        assert_eq!(c.store.state_max_age.0, Duration::from_secs(86_400));
        let c =
            parse("[store]\nstate_file = \"/srv/c.state\"\nstate_max_age = \"2h\"\nbackend = \"memory\"\n").unwrap();
        assert_eq!(c.state_file(), Path::new("/srv/c.state"));
        assert_eq!(c.store.state_max_age.0, Duration::from_secs(7200));
        let e = err("mode = \"enforce\"\n[store]\nbackend = \"redis\"\nurl = \"http://redis:6379\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("store.url")), "{e}");
        assert!(e.message.contains("is not a Redis URL"), "{e}");
        let e = err("[store]\nbackend = \"etcd\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("store.backend")), "{e}");
        let e = err("[store]\nstate_max_age = \"0s\"\n");
        assert_eq!(e.key.as_deref(), Some("store.state_max_age"), "{e}");
        let e = err("[store]\nstate_fil = \"x\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("store.state_fil")), "{e}");
        let e = err("[locks]\nfile = \"/v/l.toml\"\n[store]\nstate_file = \"/v/l.toml\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("store.state_file")), "{e}");
        assert!(e.message.contains("is the lock list"), "{e}");
        let e = err("[store]\nstate_file = \"/v/\"\n");
        assert!(e.message.contains("does not name a file"), "{e}");
    }

    #[test]
    fn a_relative_state_file_is_beside_the_config_and_changing_it_takes_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "[locks]\nfile = \"l.toml\"\n[store]\nstate_file = \"s/c.state\"\n",
        )
        .unwrap();
        let c = Config::read(&path).unwrap();
        assert_eq!(c.state_file(), dir.path().join("s/c.state"));
        std::fs::write(&path, "[locks]\nfile = \"l.toml\"\n").unwrap();
        let d = Config::read(&path).unwrap();
        assert_eq!(d.state_file(), dir.path().join("counters.state"));
        assert_eq!(c.restart_needed(&d), ["store.state_file"]);
        let e = parse("[store]\nstate_max_age = \"1h\"\n").unwrap();
        assert!(
            parse("").unwrap().restart_needed(&e).is_empty(),
            "read at the next start anyway"
        );
    }

    #[test]
    fn trusting_every_authenticated_header_is_refused_with_the_way_out() {
        let e = err("[identity]\ntrust_authenticated_headers = true\n");
        assert_eq!(e.key.as_deref(), Some("identity.trust_authenticated_headers"), "{e}");
        assert!(e.message.contains("identity.header_logins"), "{e}");
        assert!(parse("[identity]\nheader_logins = [\"Webmail@Example.com\"]\n").is_ok());
        let e = err("[identity]\nheader_logins = [\"a b\"]\n");
        assert_eq!(e.key.as_deref(), Some("identity.header_logins[0]"), "{e}");
    }
}
