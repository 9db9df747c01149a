// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Time compression for the detection benchmark: the same configuration
//! with every policy window divided by a factor, so that an hour of traffic
//! plays in an hour / factor. Counts stay as they are: `"300/1h"` compressed
//! 6x is `"300/10m"`, so every rate is the same multiple of the traffic,
//! which the actors play `factor` times faster too.
//!
//! What is compressed: each `[[rule]]`'s `rate` (whatever it counts, so the
//! rules of signals this code does not know are compressed too), each
//! `[[override]]`'s `rates`, `locks.hold_limit` and `locks.auto_lock_duration`.
//! Operational timings (timeouts, poll and eviction intervals) are not
//! policy and stay as they are. Postfix's retry schedule is compressed by
//! [`postfix_retry_schedule`].

use egress_milter::config::Rate;
use std::time::Duration;

/// Postfix's defaults for the retry schedule of deferred mail (postconf(5)):
/// `minimal_backoff_time`, `maximal_backoff_time`, `queue_run_delay`.
pub const POSTFIX_RETRY_DEFAULTS: [(&str, Duration); 3] = [
    ("minimal_backoff_time", Duration::from_secs(300)),
    ("maximal_backoff_time", Duration::from_secs(4000)),
    ("queue_run_delay", Duration::from_secs(300)),
];

/// `table` (a parsed egress-milter configuration) with every policy window
/// divided by `factor`; the keys changed, each as `key: old -> new`.
pub fn compress_config(table: &mut toml::Table, factor: u32) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    if let Some(rules) = table.get_mut("rule").and_then(toml::Value::as_array_mut) {
        for (i, rule) in rules.iter_mut().enumerate() {
            let Some(rule) = rule.as_table_mut() else { continue };
            let name = rule
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("rule[{i}]"), str::to_string);
            compress_key(
                rule,
                "rate",
                factor,
                compress_rate,
                &format!("rule {name}: rate"),
                &mut changed,
            )?;
        }
    }
    if let Some(overrides) = table.get_mut("override").and_then(toml::Value::as_array_mut) {
        for (i, entry) in overrides.iter_mut().enumerate() {
            let Some(rates) = entry.get_mut("rates").and_then(toml::Value::as_table_mut) else {
                continue;
            };
            let names: Vec<String> = rates.keys().cloned().collect();
            for name in names {
                let label = format!("override[{i}].rates.{name}");
                compress_key(rates, &name, factor, compress_rate, &label, &mut changed)?;
            }
        }
    }
    if let Some(locks) = table.get_mut("locks").and_then(toml::Value::as_table_mut) {
        compress_key(
            locks,
            "hold_limit",
            factor,
            compress_rate,
            "locks.hold_limit",
            &mut changed,
        )?;
        let label = "locks.auto_lock_duration";
        compress_key(
            locks,
            "auto_lock_duration",
            factor,
            compress_duration,
            label,
            &mut changed,
        )?;
    }
    Ok(changed)
}

/// Replaces the string at `key` of `table` (if there is one) by
/// `compress(value, factor)`, noting the change.
fn compress_key(
    table: &mut toml::Table,
    key: &str,
    factor: u32,
    compress: fn(&str, u32) -> Result<String, String>,
    label: &str,
    changed: &mut Vec<String>,
) -> Result<(), String> {
    let Some(value) = table.get(key) else { return Ok(()) };
    let old = value
        .as_str()
        .ok_or_else(|| format!("{label}: expected a string, found {value}"))?
        .to_string();
    let new = compress(&old, factor).map_err(|e| format!("{label}: {e}"))?;
    changed.push(format!("{label}: {old} -> {new}"));
    table.insert(key.to_string(), new.into());
    Ok(())
}

/// `"COUNT/WINDOW"` with the window divided by `factor`, the count kept.
pub fn compress_rate(rate: &str, factor: u32) -> Result<String, String> {
    let parsed: Rate = rate.parse().map_err(|e| format!("invalid rate \"{rate}\": {e}"))?;
    Ok(format!("{}/{}", parsed.count, divide(parsed.window, factor)?))
}

/// A duration (`"24h"`) divided by `factor`.
pub fn compress_duration(duration: &str, factor: u32) -> Result<String, String> {
    let parsed = humantime::parse_duration(duration).map_err(|e| format!("invalid duration \"{duration}\": {e}"))?;
    divide(parsed, factor)
}

/// `d / factor`, written as egress-milter and Postfix read it: in the
/// largest unit that keeps it exact (`"10m"`, `"50s"`, `"1500ms"`). An
/// error when it is not a whole number of milliseconds.
fn divide(d: Duration, factor: u32) -> Result<String, String> {
    if factor == 0 {
        return Err("the compression factor must be at least 1".into());
    }
    let nanos = d.as_nanos();
    let factor = u128::from(factor);
    if !nanos.is_multiple_of(factor) || !(nanos / factor).is_multiple_of(1_000_000) {
        return Err(format!(
            "{d:?} / {factor} is not a whole number of milliseconds: choose another factor"
        ));
    }
    let millis = nanos / factor / 1_000_000;
    if millis == 0 {
        return Err(format!("{d:?} / {factor} is zero"));
    }
    Ok(format_millis(millis))
}

/// Milliseconds in the largest exact unit of `d`, `h`, `m`, `s`, `ms`.
fn format_millis(millis: u128) -> String {
    for (unit, len) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis.is_multiple_of(len) {
            return format!("{}{unit}", millis / len);
        }
    }
    format!("{millis}ms")
}

/// Postfix's retry schedule compressed by `factor`, as main.cf lines
/// (`minimal_backoff_time = 50s`, ...), in whole seconds (Postfix's
/// resolution), at least one.
pub fn postfix_retry_schedule(factor: u32) -> Vec<String> {
    POSTFIX_RETRY_DEFAULTS
        .iter()
        .map(|(name, default)| {
            let secs = (default.as_secs_f64() / f64::from(factor.max(1))).round().max(1.0);
            format!("{name} = {secs}s")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_their_count_and_divide_their_window() {
        assert_eq!(compress_rate("30/1m", 6).as_deref(), Ok("30/10s"));
        assert_eq!(compress_rate("300/1h", 6).as_deref(), Ok("300/10m"));
        assert_eq!(compress_rate("1000/1d", 6).as_deref(), Ok("1000/4h"));
        assert_eq!(compress_rate("300/1h", 60).as_deref(), Ok("300/1m"));
        assert_eq!(compress_rate("30/1m", 60).as_deref(), Ok("30/1s"));
        assert_eq!(compress_rate("1000/1d", 60).as_deref(), Ok("1000/24m"));
        assert_eq!(compress_rate("30/m", 8).as_deref(), Ok("30/7500ms"));
        assert_eq!(compress_rate("5/1h", 1).as_deref(), Ok("5/1h"));
        assert!(compress_rate("30/1m", 7).is_err(), "60 s / 7 is not whole milliseconds");
        assert!(compress_rate("30/1s", 0).is_err());
        assert!(compress_rate("lots", 6).is_err());
        assert_eq!(compress_duration("24h", 6).as_deref(), Ok("4h"));
        // What egress-milter reads back is the compressed rate.
        let back: Rate = "300/10m".parse().expect("parse");
        assert_eq!(back.window, Duration::from_secs(600));
    }

    #[test]
    fn every_policy_window_of_a_configuration_is_compressed() {
        let mut table: toml::Table = r#"
            socket = "inet:127.0.0.1:7025"
            [limits]
            eviction_interval = "60s"
            [[rule]]
            name = "messages-per-hour"
            rate = "300/1h"
            action = "tempfail"
            [[rule]]
            name = "bounces"
            count = "bounces"
            rate = "30/1h"
            min_ratio = "20%"
            action = "lock"
            [[override]]
            identity = "news@example.org"
            rates = { messages-per-hour = "5000/1h" }
            [[override]]
            domain = "crm.example.com"
            exempt = true
            [locks]
            poll_interval = "250ms"
            hold_limit = "50/1h"
            auto_lock_duration = "24h"
        "#
        .parse()
        .expect("TOML");
        let changed = compress_config(&mut table, 6).expect("compress");
        assert_eq!(
            changed,
            [
                "rule messages-per-hour: rate: 300/1h -> 300/10m",
                "rule bounces: rate: 30/1h -> 30/10m",
                "override[0].rates.messages-per-hour: 5000/1h -> 5000/10m",
                "locks.hold_limit: 50/1h -> 50/10m",
                "locks.auto_lock_duration: 24h -> 4h",
            ]
        );
        let rules = table["rule"].as_array().expect("rules");
        assert_eq!(rules[1]["min_ratio"].as_str(), Some("20%"), "ratios are not windows");
        assert_eq!(table["limits"]["eviction_interval"].as_str(), Some("60s"));
        assert_eq!(table["locks"]["poll_interval"].as_str(), Some("250ms"));
    }

    #[test]
    fn the_shipped_example_compresses_and_still_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/egress-milter.toml");
        let text = std::fs::read_to_string(path).expect("read the example");
        let mut table: toml::Table = text.parse().expect("TOML");
        let changed = compress_config(&mut table, 6).expect("compress");
        assert!(!changed.is_empty());
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("egress-milter.toml");
        std::fs::write(&file, table.to_string()).expect("write");
        egress_milter::config::Config::read(&file).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn postfix_retries_are_compressed_to_whole_seconds() {
        assert_eq!(
            postfix_retry_schedule(6),
            [
                "minimal_backoff_time = 50s",
                "maximal_backoff_time = 667s",
                "queue_run_delay = 50s"
            ]
        );
        assert_eq!(postfix_retry_schedule(60)[0], "minimal_backoff_time = 5s");
        assert_eq!(postfix_retry_schedule(1)[1], "maximal_backoff_time = 4000s");
    }
}
