// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Cross-field checks that serde cannot express, one function per section
//! of the file, each naming the key (and, where it has one, the span) at
//! fault.

use super::{
    Action, Config, Counted, IdentityConfig, LimitsConfig, LocksConfig, RepliesConfig, RuleConfig, Scope, StatusConfig,
    StoreBackend, StoreConfig, address, format_duration,
};
use std::collections::HashSet;
use std::net::{IpAddr, UdpSocket};
use std::ops::Range;
use std::time::Duration;

/// A valid TOML file that is not a valid configuration: which key, where,
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where the value is in the file; `None` when serde kept no span for
    /// it (the caller then finds the key's line).
    pub span: Option<Range<usize>>,
    /// The dotted key, as `rule[2].action`.
    pub key: String,
    pub message: String,
}

impl Violation {
    /// A violation of `key`; an empty `span` means none is known.
    pub fn new(span: Range<usize>, key: &str, message: impl Into<String>) -> Self {
        Self {
            span: Some(span).filter(|s| !s.is_empty()),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

fn fail(span: Range<usize>, key: &str, message: String) -> Result<(), Violation> {
    Err(Violation::new(span, key, message))
}

/// Checks every section, in the order of the reference.
pub fn validate(config: &Config) -> Result<(), Violation> {
    identity(&config.identity)?;
    daemon(config)?;
    limits(&config.limits)?;
    status(&config.status)?;
    rules(&config.rules)?;
    overrides(config)?;
    replies(&config.replies)?;
    locks(&config.locks)?;
    store(config)?;
    config.notify.validate()?;
    scanner(config)
}

/// `[scanner]`, and the content rules that need it.
fn scanner(config: &Config) -> Result<(), Violation> {
    config.scanner.validate()?;
    if config.scanner.is_enabled() {
        return Ok(());
    }
    match config.rules.iter().enumerate().find(|(_, r)| r.count.is_content()) {
        Some((i, rule)) => fail(
            rule.name.span(),
            &format!("rule[{i}].count"),
            format!(
                "rule \"{}\" counts \"{}\", which only a content scanner can tell: set [scanner] url (e.g. \"http://127.0.0.1:11333\", rspamd's normal worker) or remove the rule",
                rule.name.get_ref(),
                rule.count
            ),
        ),
        None => Ok(()),
    }
}

/// `[store]` with `backend = "redis"`: the address, timeouts, fleet size.
fn redis_store(store: &StoreConfig) -> Result<(), Violation> {
    match (&store.sentinel_master, store.sentinels.is_empty()) {
        (Some(_), true) => {
            return fail(
                0..0,
                "store.sentinels",
                "with store.sentinel_master, list the Sentinels to ask, e.g. [\"redis://10.0.0.1:26379\"]".into(),
            );
        }
        (None, false) => {
            return fail(
                0..0,
                "store.sentinel_master",
                "with store.sentinels, name the master the Sentinels monitor".into(),
            );
        }
        _ => {}
    }
    let urls = std::iter::once(("store.url".to_string(), &store.url))
        .filter(|_| store.sentinels.is_empty())
        .chain(
            store
                .sentinels
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("store.sentinels[{i}]"), u)),
        );
    for (key, url) in urls {
        if let Err(why) = redis_url(url) {
            return fail(0..0, &key, why);
        }
    }
    if store.prefix.is_empty() || store.prefix.contains(['{', '}']) {
        return fail(
            0..0,
            "store.prefix",
            "must be non-empty and without braces (egress-milter adds the Redis Cluster hash tags)".into(),
        );
    }
    if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&store.timeout.0) {
        return fail(
            0..0,
            "store.timeout",
            "must be between 1ms and 10s (Postfix waits 30s for a milter reply)".into(),
        );
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&store.retry_interval.0) {
        return fail(0..0, "store.retry_interval", "must be between 10ms and 10m".into());
    }
    if !(1..=1000).contains(&store.fleet_size) {
        return fail(0..0, "store.fleet_size", "must be between 1 and 1000".into());
    }
    Ok(())
}

/// A Redis address the client can use: `redis://`, or `unix://` with a path.
fn redis_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "\"{url}\" is not a URL: write e.g. \"redis://127.0.0.1:6379/0\""
        ));
    };
    match scheme {
        "redis" | "valkey" if !rest.is_empty() => Ok(()),
        "unix" | "redis+unix" if rest.starts_with('/') => Ok(()),
        "rediss" | "valkeys" => Err(format!(
            "\"{url}\": TLS to Redis is not built in; use a local Redis, a unix socket, or a TLS tunnel (docs/fleet.md)"
        )),
        _ => Err(format!(
            "\"{url}\" is not a Redis URL: write redis://[user:password@]host:port/db or unix:///path/redis.sock"
        )),
    }
}

/// `[identity]`: sources, lengths, prefixes, who may stamp the header.
fn identity(identity: &IdentityConfig) -> Result<(), Violation> {
    if identity.trust_authenticated_headers {
        return fail(
            0..0,
            "identity.trust_authenticated_headers",
            "is no longer supported: it let every SASL user choose its identity (and get others locked); \
             name the logins that may stamp the identity header in identity.header_logins, \
             e.g. [\"webmail@example.com\"]"
                .into(),
        );
    }
    for (i, login) in identity.header_logins.iter().enumerate() {
        if address::normalise_address(identity, login.as_bytes()).is_err() {
            return fail(
                0..0,
                &format!("identity.header_logins[{i}]"),
                format!("\"{login}\" is not a SASL login or address"),
            );
        }
    }
    let realms = identity
        .local_realms
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("identity.local_realms[{i}]"), r))
        .chain(
            identity
                .default_realm
                .iter()
                .map(|r| ("identity.default_realm".to_string(), r)),
        );
    for (key, realm) in realms {
        let d = address::domain_key(realm);
        let valid = !d.is_empty()
            && d.len() <= 253
            && !d.starts_with('.')
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80);
        if !valid {
            return fail(
                0..0,
                &key,
                format!(
                    "\"{realm}\" is not a domain: write the realm as your SASL user database spells it after the '@', e.g. \"example.com\""
                ),
            );
        }
    }
    let sources = &identity.sources;
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
    if !(16..=1024).contains(&identity.max_length) {
        return fail(0..0, "identity.max_length", "must be between 16 and 1024".into());
    }
    if !(16..=128).contains(&identity.client_ipv6_prefix) {
        return fail(0..0, "identity.client_ipv6_prefix", "must be between 16 and 128".into());
    }
    Ok(())
}

/// The top-level keys.
fn daemon(config: &Config) -> Result<(), Violation> {
    if config.max_connections == 0 {
        return fail(0..0, "max_connections", "must be at least 1".into());
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&config.read_timeout.0) {
        return fail(0..0, "read_timeout", "must be between 1s and 10m".into());
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&config.idle_timeout.0) {
        return fail(0..0, "idle_timeout", "must be between 1s and 7d".into());
    }
    if let Some(data) = config.data_idle_timeout {
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&data.0) {
            return fail(0..0, "data_idle_timeout", "must be between 1s and 7d".into());
        }
        if data.0 < config.idle_timeout.0 {
            return fail(
                0..0,
                "data_idle_timeout",
                format!(
                    "must be at least idle_timeout (\"{}\"): the DATA phase includes the client's wait before its DATA command",
                    format_duration(config.idle_timeout.0)
                ),
            );
        }
    }
    if tracing_subscriber::EnvFilter::try_new(&config.log_level).is_err() {
        return fail(
            0..0,
            "log_level",
            format!("\"{}\" is not a valid log filter", config.log_level),
        );
    }
    Ok(())
}

/// `[limits]`.
fn limits(limits: &LimitsConfig) -> Result<(), Violation> {
    if limits.max_tracked_identities == 0 {
        return fail(0..0, "limits.max_tracked_identities", "must be at least 1".into());
    }
    Ok(())
}

/// `[status]`: a loopback listener unless told otherwise.
fn status(status: &StatusConfig) -> Result<(), Violation> {
    if let Some(addr) = status.listen
        && !addr.ip().is_loopback()
        && !status.allow_non_loopback
    {
        return fail(
            0..0,
            "status.listen",
            format!(
                "{addr} is not a loopback address: the status listener serves the review desk and aggregate metrics without a login; use 127.0.0.1 or ::1 (or set status.allow_non_loopback = true behind a firewall or a TLS reverse proxy)"
            ),
        );
    }
    if status.max_identities == 0 {
        return fail(0..0, "status.max_identities", "must be at least 1".into());
    }
    if status.max_connections == 0 {
        return fail(0..0, "status.max_connections", "must be at least 1".into());
    }
    for (key, header) in [
        ("status.proxy_user_header", &status.proxy_user_header),
        ("status.proxy_secret_header", &status.proxy_secret_header),
    ] {
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return fail(
                0..0,
                key,
                format!("\"{header}\" is not an HTTP header name (letters, digits, - and _)"),
            );
        }
    }
    if status
        .proxy_secret_header
        .eq_ignore_ascii_case(&status.proxy_user_header)
    {
        return fail(
            0..0,
            "status.proxy_secret_header",
            "must differ from status.proxy_user_header".into(),
        );
    }
    if status.proxy_secret_file.is_none() {
        for (i, proxy) in status.trusted_proxies.iter().enumerate() {
            let Some(what) = this_host(*proxy) else {
                continue;
            };
            return fail(
                0..0,
                &format!("status.trusted_proxies[{i}]"),
                format!(
                    "{proxy} is {what}: any user of this host (even nobody, with curl) can connect from it and send {} with any name; \
                     set status.proxy_secret_file to a secret only the proxy sends (in {}), see docs/review.md#behind-a-reverse-proxy",
                    status.proxy_user_header, status.proxy_secret_header
                ),
            );
        }
    }
    if let Some(origin) = &status.public_origin
        && !origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .is_some_and(|host| !host.is_empty() && !host.contains(['/', '?', '#']))
    {
        return fail(
            0..0,
            "status.public_origin",
            format!("\"{origin}\" is not an origin: write scheme and host only, e.g. \"https://desk.example.com\""),
        );
    }
    Ok(())
}

/// Whether `ip` is an address of this host, which any local process can
/// connect from: loopback (`127.0.0.0/8`, `::1`, also as `::ffff:127.x`),
/// unspecified, or one a socket can be bound to here. Says which.
fn this_host(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok() {
        Some("an address of this host")
    } else {
        None
    }
}

/// `[[rule]]`: names, and lock rules per identity.
fn rules(rules: &[RuleConfig]) -> Result<(), Violation> {
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
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

    for (i, rule) in rules.iter().enumerate() {
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
        if rule.burst.is_some() && rule.count.is_distinct() {
            return fail(
                rule.name.span(),
                &format!("rule[{i}].burst"),
                format!(
                    "a {} rule counts different values, not a rate: it has no burst",
                    rule.count
                ),
            );
        }
        if rule.min_ratio.is_some() && rule.count != Counted::Bounces {
            return fail(
                rule.name.span(),
                &format!("rule[{i}].min_ratio"),
                "only a rule with count = \"bounces\" has a ratio (to the recipients it sent)".into(),
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
    Ok(())
}

/// `[[override]]`: one per target, rates for rules that exist.
fn overrides(config: &Config) -> Result<(), Violation> {
    let mut targets = HashSet::new();
    for (i, over) in config.overrides.iter().enumerate() {
        let span = over.span();
        let over = over.get_ref();
        let key = format!("override[{i}]");
        let target = match (&over.identity, &over.domain) {
            (Some(id), None) => format!("identity {}", address::lock_key(&config.identity, id)),
            (None, Some(d)) => format!("domain {}", address::domain_key(d)),
            _ => {
                return fail(span, &key, "give exactly one of \"identity\" or \"domain\"".into());
            }
        };
        if !targets.insert(target.clone()) {
            return fail(span, &key, format!("{target} already has an override; merge the two"));
        }
        if over.exempt && !(over.rates.is_empty() && over.sender_domains.is_empty()) {
            return fail(
                span,
                &key,
                "an exempt override cannot also set rates or sender_domains: no rule applies to it".into(),
            );
        }
        if !over.exempt && over.rates.is_empty() && over.sender_domains.is_empty() {
            return fail(
                span,
                &key,
                "set \"exempt = true\", or at least one entry in \"rates\" or \"sender_domains\"".into(),
            );
        }
        for (j, domain) in over.sender_domains.iter().enumerate() {
            if domain != "*" && !is_domain_name(domain) {
                return fail(
                    span.clone(),
                    &format!("{key}.sender_domains[{j}]"),
                    format!("\"{domain}\" is not a domain name (write \"example.com\", without \"@\"), nor \"*\""),
                );
            }
        }
        for rule_name in over.rates.keys() {
            let rate_key = format!("override[{i}].rates.{}", rule_name.get_ref());
            let Some(rule) = config.rules.iter().find(|r| r.name.get_ref() == rule_name.get_ref()) else {
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
    Ok(())
}

/// `[replies]`: each template of the right class.
fn replies(replies: &RepliesConfig) -> Result<(), Violation> {
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
    Ok(())
}

/// `[locks]`: support addresses and local domains.
fn locks(locks: &LocksConfig) -> Result<(), Violation> {
    for (i, addr) in locks.allow_recipients.iter().enumerate() {
        if addr.is_empty() || addr.contains(char::is_whitespace) || addr.starts_with('@') {
            return fail(
                0..0,
                &format!("locks.allow_recipients[{i}]"),
                format!("\"{addr}\" is not a local part or an address"),
            );
        }
    }
    for (i, domain) in locks.local_domains.iter().enumerate() {
        if !is_domain_name(domain) {
            return fail(
                0..0,
                &format!("locks.local_domains[{i}]"),
                format!("\"{domain}\" is not a domain name (write \"example.com\", without \"@\")"),
            );
        }
    }
    Ok(())
}

/// Whether `domain` is a domain name (labels of letters, digits and '-').
fn is_domain_name(domain: &str) -> bool {
    let d = domain.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
    };
    !d.is_empty() && d.len() <= 253 && d.split('.').all(label_ok)
}

/// `[store]`: a backend this build has, and a state file of its own.
fn store(config: &Config) -> Result<(), Violation> {
    if config.store.backend == StoreBackend::Redis {
        return redis_store(&config.store);
    }
    let state = config.state_file();
    if state.file_name().is_none() || state.as_os_str().to_string_lossy().ends_with('/') {
        return fail(
            0..0,
            "store.state_file",
            format!("\"{}\" does not name a file", state.display()),
        );
    }
    if state == config.locks.file {
        return fail(
            0..0,
            "store.state_file",
            "is the lock list (locks.file): the counters need a file of their own".into(),
        );
    }
    Ok(())
}
