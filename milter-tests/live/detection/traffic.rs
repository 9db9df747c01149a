// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The raw material of the benchmark's traffic: a seeded random generator
//! (the same run every time), recipient lists of the kinds senders really
//! have (a person's address book, a club's member list, a newsletter's
//! subscribers, a spammer's purchased list), and the pace an attacker who
//! has read the configuration picks to stay under every volume limit.
//!
//! Stale addresses (`unknown.*@`) are the ones the sink refuses with
//! `550 5.1.1`, so they come back to their sender as bounces.

use crate::sink::UNKNOWN_PREFIX;
use std::time::Duration;

/// A small, seeded generator (splitmix64): the benchmark's traffic is the
/// same on every run, so two runs differ only by the machine's timing.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A whole number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high.saturating_sub(low)).mul_f64(self.unit())
    }

    /// An exponentially distributed gap of mean `mean` (a Poisson process:
    /// how independent people's messages arrive), at most 5 means.
    pub fn exponential(&mut self, mean: Duration) -> Duration {
        mean.mul_f64((-(1.0 - self.unit()).ln()).min(5.0))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIRST_NAMES: &[&str] = &[
    "anna", "ben", "chloe", "david", "emma", "felix", "grace", "hugo", "iris", "jonas", "kate", "leo", "mia", "noah",
    "olga", "paul", "quinn", "rosa", "sam", "tara", "umar", "vera", "will", "xenia", "yusuf", "zoe",
];
const LAST_NAMES: &[&str] = &[
    "adams", "baker", "clark", "dubois", "evans", "fischer", "garcia", "hansen", "ito", "jensen", "keller", "lopez",
    "meyer", "novak", "olsen", "petrov", "rossi", "schmidt", "tanaka", "weber",
];
/// Big mailbox providers (of the internet, as the sink plays it).
pub const FREEMAIL: &[&str] = &[
    "mailbox.test",
    "webpost.test",
    "inbox-one.test",
    "postal.test",
    "letterbox.test",
];

/// A company or small domain, one of many: `d17.example-firms.test`.
pub fn small_domain(k: usize) -> String {
    format!("d{k}.example-firms.test")
}

/// A person's address at `domain`, made from `rng`.
pub fn person_at(rng: &mut Rng, domain: &str) -> String {
    let first = rng.pick(FIRST_NAMES);
    let last = rng.pick(LAST_NAMES);
    format!("{first}.{last}{}@{domain}", rng.below(100))
}

/// `address` as the stale address of a mailbox that no longer exists (the
/// sink refuses it with 550 5.1.1).
pub fn stale(address: &str) -> String {
    format!("{UNKNOWN_PREFIX}.{address}")
}

/// `n` distinct addresses, a share `freemail` of them at the big providers
/// and the rest spread over `small_domains` small domains (numbered from
/// `first_domain`), with a share `stale_share` of stale ones (exactly
/// rounded, spread through the list).
pub struct AddressList {
    pub n: usize,
    pub freemail: f64,
    pub small_domains: usize,
    pub first_domain: usize,
    pub stale_share: f64,
}

impl AddressList {
    pub fn generate(&self, rng: &mut Rng) -> Vec<String> {
        let stale_count = (self.n as f64 * self.stale_share).round() as usize;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.n);
        while out.len() < self.n {
            let domain = if rng.chance(self.freemail) || self.small_domains == 0 {
                rng.pick(FREEMAIL).to_string()
            } else {
                small_domain(self.first_domain + rng.below(self.small_domains))
            };
            let address = person_at(rng, &domain);
            if seen.insert(address.clone()) {
                out.push(address);
            }
        }
        // Every k-th address is stale, so that any part of the list has its share.
        if stale_count > 0 {
            let step = self.n as f64 / stale_count as f64;
            for i in 0..stale_count {
                let at = (i as f64 * step) as usize;
                out[at] = stale(&out[at]);
            }
        }
        out
    }
}

/// What an attacker who has read the configuration can send without ever
/// being throttled: the lowest allowance, per second, of the per-identity
/// rules counting messages and of those counting recipients (each rule's
/// `count / window`, or `count / horizon` when the window is longer than
/// the attacker's run: a daily budget may be spent in one go). Rules of
/// other kinds (the signals beyond volume) are what the attacker does not
/// try to stay under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VolumeLimits {
    pub messages_per_sec: f64,
    pub recipients_per_sec: f64,
}

impl VolumeLimits {
    /// From a configuration table (the compressed one: the rates and the
    /// horizon are then both in compressed time, or both in real time).
    pub fn of(config: &toml::Table, horizon: Duration) -> Result<VolumeLimits, String> {
        let mut limits = VolumeLimits {
            messages_per_sec: f64::INFINITY,
            recipients_per_sec: f64::INFINITY,
        };
        let rules = config
            .get("rule")
            .and_then(toml::Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for rule in rules {
            let per = rule.get("per").and_then(toml::Value::as_str).unwrap_or("identity");
            let count = rule.get("count").and_then(toml::Value::as_str).unwrap_or("messages");
            let action = rule.get("action").and_then(toml::Value::as_str).unwrap_or("");
            let dry_run = rule.get("dry_run").and_then(toml::Value::as_bool).unwrap_or(false);
            if per != "identity" || action == "log" || dry_run {
                continue;
            }
            let Some(rate) = rule.get("rate").and_then(toml::Value::as_str) else {
                continue;
            };
            let rate: egress_milter::config::Rate = rate.parse().map_err(|e| format!("rate \"{rate}\": {e}"))?;
            let allowance = f64::from(rate.count.get()) / rate.window.min(horizon).as_secs_f64();
            let slot = match count {
                "messages" => &mut limits.messages_per_sec,
                "recipients" => &mut limits.recipients_per_sec,
                _ => continue,
            };
            *slot = slot.min(allowance);
        }
        if !limits.messages_per_sec.is_finite() {
            return Err("the configuration has no per-identity message limit".into());
        }
        Ok(limits)
    }

    /// The gap between messages of `recipients` recipients that keeps a
    /// sender at `share` (0.9: 90 %) of both limits.
    pub fn gap(&self, recipients: usize, share: f64) -> Duration {
        let by_messages = 1.0 / self.messages_per_sec;
        let by_recipients = recipients as f64 / self.recipients_per_sec;
        Duration::from_secs_f64(by_messages.max(by_recipients) / share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded_and_spread() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        let mut rng = Rng::new(1);
        let mean = (0..10_000).map(|_| rng.unit()).sum::<f64>() / 10_000.0;
        assert!((0.48..0.52).contains(&mean), "{mean}");
        let gaps: Vec<Duration> = (0..10_000).map(|_| rng.exponential(Duration::from_secs(60))).collect();
        let mean = gaps.iter().sum::<Duration>() / 10_000;
        assert!((55..65).contains(&mean.as_secs()), "{mean:?}");
        assert!(gaps.iter().all(|g| *g <= Duration::from_secs(300)));
    }

    #[test]
    fn address_lists_have_their_stale_share_and_no_duplicates() {
        let mut rng = Rng::new(3);
        let list = AddressList {
            n: 150,
            freemail: 0.5,
            small_domains: 30,
            first_domain: 100,
            stale_share: 0.3,
        }
        .generate(&mut rng);
        assert_eq!(list.len(), 150);
        let stale: Vec<_> = list
            .iter()
            .filter(|a| crate::sink::UnknownUsers::default().contains(a))
            .collect();
        assert_eq!(stale.len(), 45);
        // In every third of the list, about its share.
        assert!(list[..50].iter().filter(|a| a.starts_with("unknown.")).count() >= 14);
        let distinct: std::collections::HashSet<_> = list.iter().collect();
        assert_eq!(distinct.len(), 150);
        assert!(list.iter().all(|a| a.contains('@')));
    }

    #[test]
    fn the_volume_limits_are_read_from_the_rules() {
        let config: toml::Table = r#"
            [[rule]]
            name = "per-minute"
            rate = "30/1m"
            action = "tempfail"
            [[rule]]
            name = "per-hour"
            rate = "300/1h"
            action = "tempfail"
            [[rule]]
            name = "per-day"
            rate = "1000/1d"
            action = "tempfail"
            [[rule]]
            name = "recipients"
            count = "recipients"
            rate = "1000/1h"
            action = "tempfail"
            [[rule]]
            name = "domain"
            per = "domain"
            rate = "5/1h"
            action = "tempfail"
            [[rule]]
            name = "logged"
            rate = "1/1h"
            action = "log"
            [[rule]]
            name = "new-signal"
            count = "distinct-recipient-domains"
            rate = "1/1h"
            action = "lock"
        "#
        .parse()
        .expect("TOML");
        let limits = VolumeLimits::of(&config, Duration::from_secs(5400)).expect("limits");
        assert!((limits.messages_per_sec - 300.0 / 3600.0).abs() < 1e-9, "{limits:?}");
        assert!((limits.recipients_per_sec - 1000.0 / 3600.0).abs() < 1e-9, "{limits:?}");
        // 90 % of 300 an hour: one message every 13.3 s; with 45 recipients
        // each, 90 % of 1000 recipients an hour: one every 180 s.
        assert_eq!(limits.gap(1, 0.9).as_millis(), 13_333);
        assert_eq!(limits.gap(45, 0.9).as_secs(), 180);
        // Over a horizon of 2 hours, the daily 1000 may be spent at once:
        // the hourly rule stays the tightest.
        let limits = VolumeLimits::of(&config, Duration::from_secs(7200)).expect("limits");
        assert!((limits.messages_per_sec - 300.0 / 3600.0).abs() < 1e-9);
        // Over 4 hours it is the day's budget: 1000 in 4 h.
        let limits = VolumeLimits::of(&config, Duration::from_secs(4 * 3600)).expect("limits");
        assert!((limits.messages_per_sec - 1000.0 / (4.0 * 3600.0)).abs() < 1e-9);
    }
}
