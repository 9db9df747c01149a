// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The fleet's counters on a real Redis: the decision script computes the
//! limiter's arithmetic exactly, and the policy gives the same verdicts on
//! both backends for the same rules and arrival times.

use crate::common::redis::RedisServer;
use egress_milter::clock::Clock;
use egress_milter::config::{Config, StoreConfig};
use egress_milter::locks::FileLocks;
use egress_milter::policy::identity::Identity;
use egress_milter::policy::limiter::{Cell, Limit, Outcome};
use egress_milter::policy::shared::{OpKind, SharedCounters, SharedOp};
use egress_milter::policy::{Counters, Demand, Plan, Policy, Trip};
use egress_milter::store::StoreStats;
use egress_milter::store::counters::RedisCounters;
use egress_milter::store::link::RedisLink;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn store_config(redis: &RedisServer, prefix: &str) -> StoreConfig {
    let mut config = StoreConfig {
        url: redis.url(),
        prefix: prefix.into(),
        ..StoreConfig::default()
    };
    config.timeout.0 = Duration::from_secs(2);
    config
}

fn redis_counters(redis: &RedisServer, prefix: &str, clock: &Clock) -> RedisCounters {
    let config = store_config(redis, prefix);
    let link = RedisLink::new(&config, Arc::new(StoreStats::default())).expect("store config");
    RedisCounters::new(link, &config).with_clock(clock.clone())
}

/// Random limits, arrival times, weights and kinds: every answer of the
/// script equals the arithmetic of `policy::limiter` in microseconds.
#[tokio::test]
async fn the_decision_script_computes_the_limiters_arithmetic() {
    let Some(redis) = RedisServer::start() else { return };
    let clock = Clock::manual();
    let counters = redis_counters(&redis, "arith:", &clock);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..40 {
        let count = 1 + rng.below(12) as u32;
        let window = Duration::from_millis(1 + rng.below(5_000));
        let burst = (rng.below(3) == 0).then(|| NonZeroU32::new(1 + rng.below(u64::from(count)) as u32).unwrap());
        let limit = Limit::new(NonZeroU32::new(count).unwrap(), window, burst);
        let reference = limit.in_micros();
        let mut cell = Cell::default();
        let subject = format!("user{round}@example.com");
        for step in 0..60 {
            clock.advance(Duration::from_micros(
                rng.below(2 * window.as_micros() as u64 / u64::from(count) + 1),
            ));
            let now = clock.elapsed_nanos() / 1000;
            let n = rng.below(u64::from(count) + 2) as u32;
            let kind = match rng.below(3) {
                0 => OpKind::Peek,
                1 => OpKind::Count,
                _ => OpKind::Commit { blocks: true },
            };
            let op = SharedOp {
                subject: subject.clone(),
                domain: false,
                group: "example.com".into(),
                counter: format!("r{round}"),
                limit,
                n,
                kind,
                ttl: Duration::from_secs(60),
            };
            let answer = counters.apply(std::slice::from_ref(&op)).await.expect("Redis answers")[0];
            let (outcome, next) = reference.check(cell, now, n);
            if kind != OpKind::Peek
                && n > 0
                && let Some(next) = next
            {
                cell = next;
            }
            let expected = match outcome {
                // The reference's units are microseconds, read as nanoseconds.
                Outcome::Denied { retry_in } => Outcome::Denied {
                    retry_in: Duration::from_micros(retry_in.as_nanos() as u64),
                },
                o => o,
            };
            let mut usage = reference.usage(cell, now);
            usage.reset_in = Duration::from_micros(usage.reset_in.as_nanos() as u64);
            let context = format!("round {round} step {step}: {limit:?} n={n} {kind:?} at {now}µs");
            assert_eq!(answer.outcome, expected, "{context}");
            // Usage is answered for what does not fit and for a look (n = 0).
            if !expected.is_allowed() || n == 0 {
                assert_eq!(answer.usage, usage, "{context}");
            }
        }
    }
}

fn config(rules: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress-milter.toml");
    let text = format!(
        "[locks]\nfile = \"{}\"\n{rules}",
        dir.path().join("locks.toml").display()
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::read(&path).unwrap_or_else(|e| panic!("{e}"));
    std::mem::forget(dir);
    config
}

fn policy(config: &Config, counters: Arc<Counters>) -> Policy {
    let locks = FileLocks::open(&config.locks.file, egress_milter::locks::lock_normaliser(config)).unwrap();
    Policy::new(Arc::new(config.clone()), counters, locks)
}

fn id(value: &str) -> Identity {
    Identity {
        source: egress_milter::config::IdentitySource::Auth,
        value: value.into(),
    }
}

/// What one backend answered, comparable across backends.
fn verdicts(trips: &[Trip]) -> Vec<(String, String, u32, u32, Option<Duration>)> {
    trips
        .iter()
        .map(|t| (t.rule.clone(), t.key.clone(), t.usage.used, t.usage.limit, t.retry_in))
        .collect()
}

/// The policy's stages on memory and on Redis, side by side, with the same
/// clock: identical trips, message after message (identity and domain
/// rules, a lock rule counting attempts, a burst, an override).
#[tokio::test]
async fn the_policy_gives_the_same_verdicts_on_both_backends() {
    let Some(redis) = RedisServer::start() else { return };
    let rules = r#"
[[rule]]
name = "per-user"
count = "messages"
per = "identity"
rate = "5/1m"
action = "tempfail"

[[rule]]
name = "per-user-recipients"
count = "recipients"
per = "identity"
rate = "20/10m"
burst = 10
action = "tempfail"

[[rule]]
name = "per-domain"
count = "messages"
per = "domain"
rate = "12/1m"
action = "tempfail"

[[rule]]
name = "lock"
count = "messages"
per = "identity"
rate = "10/1m"
action = "lock"

[[override]]
identity = "vip@example.com"
rates = { "per-user" = "10/1m" }
"#;
    let config = config(rules);
    let clock = Clock::manual();
    let memory = policy(&config, Counters::new(clock.clone()));
    let shared = Arc::new(redis_counters(&redis, "same:", &clock));
    let on_redis = policy(&config, Counters::with_shared(clock.clone(), shared.clone()));
    let users = ["a@example.com", "b@example.com", "vip@example.com", "c@example.org"];
    let mut rng = Rng(42);
    let mut counted: HashMap<&str, u32> = HashMap::new();
    for step in 0..400 {
        clock.advance(Duration::from_millis(rng.below(4_000)));
        let user = users[rng.below(users.len() as u64) as usize];
        let rcpts = 1 + rng.below(4) as u32;
        let (p1, p2): (Plan, Plan) = (memory.plan(id(user), false), on_redis.plan(id(user), false));
        let (mail, rcpt) = (Demand::volume(1, 0), Demand::volume(0, rcpts));
        let mut a = memory.check(&[&p1], &mail, &mail).await;
        let mut b = on_redis.check(&[&p2], &mail, &mail).await;
        assert_eq!(verdicts(&a), verdicts(&b), "step {step}: MAIL of {user}");
        if a.is_empty() {
            a = memory.check(&[&p1], &rcpt, &rcpt).await;
            b = on_redis.check(&[&p2], &rcpt, &rcpt).await;
            assert_eq!(verdicts(&a), verdicts(&b), "step {step}: RCPT of {user}");
        }
        if a.is_empty() {
            let message = Demand::volume(1, rcpts);
            a = memory.commit_all(&[&p1], &message).await;
            b = on_redis.commit_all(&[&p2], &message).await;
            assert_eq!(verdicts(&a), verdicts(&b), "step {step}: end of message of {user}");
            if a.is_empty() {
                *counted.entry(user).or_default() += 1;
            }
        }
    }
    assert!(shared.available(), "Redis answered every decision");
    assert!(counted.len() == users.len(), "every user got mail through: {counted:?}");
    let explained_memory = memory.explain(id("a@example.com")).await;
    let explained_redis = on_redis.explain(id("a@example.com")).await;
    assert_eq!(explained_memory, explained_redis, "explain reads the same counts");
}

/// Keys live in the identity's domain's hash slot and expire when idle.
#[tokio::test]
async fn buckets_share_the_domains_hash_tag_and_expire() {
    let Some(redis) = RedisServer::start() else { return };
    let config = config(
        r#"
[[rule]]
name = "u"
count = "messages"
per = "identity"
rate = "3/1m"
action = "tempfail"

[[rule]]
name = "d"
count = "messages"
per = "domain"
rate = "30/1m"
action = "tempfail"
"#,
    );
    let clock = Clock::real();
    let policy = policy(
        &config,
        Counters::with_shared(clock.clone(), Arc::new(redis_counters(&redis, "tags:", &clock))),
    );
    let plan = policy.plan(id("x}{@example.net"), false);
    assert!(policy.commit_all(&[&plan], &Demand::volume(1, 1)).await.is_empty());
    let mut keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", "tags:*"])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "tags:{example.net}:d:example.net",
            "tags:{example.net}:i:x%7D%7B@example.net"
        ]
    );
    // Two windows plus a slot plus a second: 2·60 + 60/30 + 1 s for the
    // domain, 2·60 + 60/3 + 1 s for the identity.
    for (key, expected) in keys.iter().zip([123_000, 141_000]) {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(
            (expected - 2_000..=expected).contains(&ttl),
            "{key} expires when idle, {expected} ms after its last count: {ttl} ms"
        );
    }
}
