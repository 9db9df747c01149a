// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Whether each override keeps the escalation "throttle at N, lock at a
//! multiple of N": an override that raises a throttle but leaves the lock
//! rule above it alone lets its identity send, within its throttles, more
//! than the lock rule allows, and an honest bulk sender (the newsletter the
//! override was written for) is locked without ever being throttled.

use super::{Action, Config, Counted, OverrideConfig, Rate, RuleConfig, format_duration};
use std::time::Duration;

/// One override that opens that gap, for the warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// `identity newsletter@example.com` or `domain crm.example.com`.
    pub target: String,
    /// The lock rule the override leaves alone.
    pub lock_rule: String,
    pub lock_rate: Rate,
    /// The most the override's throttles let through in the lock rule's
    /// window, and the throttle that bounds it.
    pub admitted: u64,
    pub throttle: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = format_duration(self.lock_rate.window);
        write!(
            f,
            "override for {}: its throttles let {} through in {window} (\"{}\"), more than lock rule \"{}\" ({}) allows, which it leaves alone: the identity would be locked while sending within its throttles; give the override a rate for \"{}\" too, e.g. \"{}/{window}\" (three times what the throttles let through)",
            self.target,
            self.admitted,
            self.throttle,
            self.lock_rule,
            self.lock_rate,
            self.lock_rule,
            self.admitted.saturating_mul(3),
        )
    }
}

/// Every override that raises a throttle so far that a lock rule it leaves
/// alone could lock its identity at a pace the throttles allow, where the
/// rules without the override could not. (A gap the rules have by design,
/// such as a daily lock below 24 times an hourly throttle for the patient
/// sender, is the site's choice and not reported.)
pub fn gaps(config: &Config) -> Vec<Gap> {
    let mut found = Vec::new();
    for over in &config.overrides {
        let over = over.get_ref();
        if over.exempt {
            continue;
        }
        let Some(target) = target(config, over) else {
            continue;
        };
        for lock in config.rules.iter().filter(|r| counts_escalation(r, Action::Lock)) {
            if rate_of(over, lock).is_some() {
                continue;
            }
            let throttles: Vec<&RuleConfig> = config
                .rules
                .iter()
                .filter(|t| {
                    (counts_escalation(t, Action::Tempfail) || counts_escalation(t, Action::Reject))
                        && t.count == lock.count
                        && t.per == lock.per
                })
                .collect();
            if !throttles.iter().any(|t| rate_of(over, t).is_some()) {
                continue;
            }
            let window = lock.rate.window;
            let limit = u64::from(lock.rate.count.get());
            let without = throttles.iter().map(|t| admitted(t.rate, window)).min();
            let with = throttles
                .iter()
                .map(|t| (admitted(rate_of(over, t).unwrap_or(t.rate), window), *t))
                .min_by_key(|(n, _)| *n);
            if let (Some(without), Some((admitted, throttle))) = (without, with)
                && without <= limit
                && admitted > limit
            {
                found.push(Gap {
                    target: target.clone(),
                    lock_rule: lock.name.get_ref().clone(),
                    lock_rate: lock.rate,
                    admitted,
                    throttle: throttle.name.get_ref().clone(),
                });
            }
        }
    }
    found
}

/// A rule with `action` that takes part in the escalation: enforced (not
/// a dry run) and counting a quantity that throttles and locks share.
fn counts_escalation(rule: &RuleConfig, action: Action) -> bool {
    rule.action == action && !rule.dry_run && !matches!(rule.count, Counted::Bounces | Counted::ForeignSenders)
        // Content rules count every scanned message, throttles as locks:
        // no throttle admits less than its lock rule counts.
        && !rule.count.is_content()
}

fn target(config: &Config, over: &OverrideConfig) -> Option<String> {
    match (&over.identity, &over.domain) {
        (Some(id), _) => Some(format!("identity {}", super::address::lock_key(&config.identity, id))),
        (None, Some(domain)) => Some(format!("domain {}", super::address::domain_key(domain))),
        (None, None) => None,
    }
}

/// The override's rate for `rule`, if it names it.
fn rate_of(over: &OverrideConfig, rule: &RuleConfig) -> Option<Rate> {
    over.rates
        .iter()
        .find(|(name, _)| name.get_ref() == rule.name.get_ref())
        .map(|(_, rate)| *rate)
}

/// The most a throttle at `rate` lets through in any window of `window`:
/// its count in each of its windows that the longer one spans.
fn admitted(rate: Rate, window: Duration) -> u64 {
    let spans = window.as_nanos().div_ceil(rate.window.as_nanos().max(1)).max(1);
    u64::try_from(spans)
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(rate.count.get()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const RULES: &str = r#"
[[rule]]
name = "messages-per-minute"
rate = "30/1m"
action = "tempfail"

[[rule]]
name = "messages-per-hour"
rate = "300/1h"
action = "tempfail"

[[rule]]
name = "lock-messages"
rate = "900/1h"
action = "lock"

[[rule]]
name = "recipient-domains-per-hour"
count = "distinct-recipient-domains"
rate = "150/1h"
action = "tempfail"

[[rule]]
name = "lock-recipient-domains-per-day"
count = "distinct-recipient-domains"
rate = "600/1d"
action = "lock"
"#;

    fn gaps_of(overrides: &str) -> Vec<Gap> {
        let config = Config::parse(&format!("{RULES}{overrides}"), Path::new("t.toml")).unwrap();
        gaps(&config)
    }

    #[test]
    fn raising_a_throttle_but_not_its_lock_rule_is_a_gap() {
        // The newsletter example as it was documented: 5000 an hour, while
        // lock-messages stays at 900 an hour; the per-minute throttle
        // bounds the hour at 1800.
        let found =
            gaps_of("[[override]]\nidentity = \"News@Example.com\"\nrates = { messages-per-hour = \"5000/1h\" }\n");
        assert_eq!(
            found,
            [Gap {
                target: "identity news@example.com".into(),
                lock_rule: "lock-messages".into(),
                lock_rate: "900/1h".parse().unwrap(),
                admitted: 1800,
                throttle: "messages-per-minute".into(),
            }]
        );
        let text = found[0].to_string();
        assert!(text.contains("\"5400/1h\""), "{text}");
    }

    #[test]
    fn raising_both_or_exempting_is_no_gap() {
        assert!(
            gaps_of(
                "[[override]]\nidentity = \"news@example.com\"\nrates = { messages-per-hour = \"5000/1h\", messages-per-minute = \"100/1m\", lock-messages = \"15000/1h\" }\n"
            )
            .is_empty()
        );
        assert!(gaps_of("[[override]]\ndomain = \"crm.example.com\"\nexempt = true\n").is_empty());
        // Raised, but still under the lock rule: 600 an hour.
        assert!(
            gaps_of("[[override]]\nidentity = \"a@example.com\"\nrates = { messages-per-hour = \"600/1h\" }\n")
                .is_empty()
        );
    }

    #[test]
    fn a_gap_the_rules_have_by_design_is_not_reported() {
        // 150 new domains an hour is 3600 a day, over the daily lock of 600
        // without any override: the patient sender's lock. Raising the
        // hourly throttle does not make that the override's doing.
        let found =
            gaps_of("[[override]]\ndomain = \"example.org\"\nrates = { recipient-domains-per-hour = \"500/1h\" }\n");
        assert!(found.is_empty(), "{found:?}");
    }
}
