// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The fleet's counters on Redis: each decision is one `EVALSHA` of
//! `decide.lua`, which does the limiter's arithmetic on every bucket the
//! decision touches, atomically, on Redis' clock.
//!
//! Layout: one hash per counted subject, `<prefix>{<group>}:i:<identity>`
//! or `<prefix>{<group>}:d:<domain>`, one field per rule (named after the
//! rule's definition), value five integers. `<group>` is the identity's
//! domain (or the identity when it has none), so the identity's and its
//! domain's buckets share a Redis Cluster hash slot. A field is named by a
//! hash of its rule's definition. A hash expires two of its longest window
//! after it was last counted in, when it is idle anyway.

use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::policy::limiter::{Outcome, Usage};
use crate::policy::shared::{BoxFuture, OpAnswer, OpKind, SharedCounters, SharedOp, Unavailable};
use crate::store::key_part;
use crate::store::link::RedisLink;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The decision script; see its header for the arguments.
const DECIDE: &str = include_str!("decide.lua");

/// Counters on Redis.
pub struct RedisCounters {
    link: Arc<RedisLink>,
    prefix: String,
    timeout: Duration,
    script: redis::Script,
    /// `None`: Redis' own clock, one for the fleet. A clock here (tests)
    /// is sent with each call instead.
    clock: Option<Clock>,
}

impl RedisCounters {
    pub fn new(link: Arc<RedisLink>, config: &StoreConfig) -> Self {
        Self {
            link,
            prefix: config.prefix.clone(),
            timeout: config.timeout.0,
            script: redis::Script::new(DECIDE),
            clock: None,
        }
    }

    /// Counters that take the time from `clock` instead of Redis: the same
    /// arrival times as an in-memory test gets.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The key of a subject's hash.
    pub fn key(&self, group: &str, domain: bool, subject: &str) -> String {
        format!(
            "{}{{{}}}:{}:{}",
            self.prefix,
            key_part(group),
            if domain { 'd' } else { 'i' },
            key_part(subject)
        )
    }

    fn invocation(&self, ops: &[SharedOp]) -> redis::ScriptInvocation<'_> {
        let mut keys: Vec<(String, Duration)> = Vec::new();
        let indices: Vec<usize> = ops
            .iter()
            .map(|op| {
                let key = self.key(&op.group, op.domain, &op.subject);
                match keys.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        keys[i].1 = keys[i].1.max(op.ttl);
                        i
                    }
                    None => {
                        keys.push((key, op.ttl));
                        keys.len() - 1
                    }
                }
            })
            .collect();
        let mut inv = self.script.prepare_invoke();
        let now = self
            .clock
            .as_ref()
            .map_or(String::new(), |c| (c.elapsed_nanos() / 1000).to_string());
        inv.arg(now);
        for (_, ttl) in &keys {
            inv.arg(ttl.as_millis().max(1) as u64);
        }
        for (op, index) in ops.iter().zip(indices) {
            let (window, interval) = op.limit.micros();
            inv.arg(index + 1)
                .arg(&op.counter)
                .arg(op.limit.count())
                .arg(window)
                .arg(interval)
                .arg(op.limit.burst())
                .arg(op.n)
                .arg(match op.kind {
                    OpKind::Peek => 0,
                    OpKind::Count => 1,
                    OpKind::Commit { blocks: false } => 2,
                    OpKind::Commit { blocks: true } => 3,
                });
        }
        for (key, _) in keys {
            inv.key(key);
        }
        inv
    }
}

fn answers(raw: &[i64], ops: usize) -> Result<Vec<OpAnswer>, Unavailable> {
    if raw.len() != ops * 5 {
        return Err(Unavailable(format!(
            "the decision script answered {} values for {ops} operations",
            raw.len()
        )));
    }
    let u32_of = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    let micros = |v: i64| Duration::from_micros(u64::try_from(v.max(0)).unwrap_or(0));
    Ok(raw
        .chunks_exact(5)
        .map(|a| OpAnswer {
            outcome: match a[0] {
                0 => Outcome::Allowed {
                    remaining: u32_of(a[1]),
                },
                1 => Outcome::Denied { retry_in: micros(a[1]) },
                _ => Outcome::Never,
            },
            usage: Usage {
                used: u32_of(a[2]),
                limit: u32_of(a[3]),
                reset_in: micros(a[4]),
            },
        })
        .collect())
}

impl SharedCounters for RedisCounters {
    fn apply<'a>(&'a self, ops: &'a [SharedOp]) -> BoxFuture<'a, Result<Vec<OpAnswer>, Unavailable>> {
        Box::pin(async move {
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            let stats = self.link.stats();
            let invocation = self.invocation(ops);
            let result = self
                .link
                .run(self.timeout, |mut conn| async move {
                    invocation.invoke_async::<Vec<i64>>(&mut conn).await
                })
                .await;
            match result {
                Ok(raw) => {
                    stats.decisions.fetch_add(1, Ordering::Relaxed);
                    answers(&raw, ops.len())
                }
                Err(e) => {
                    stats.degraded_decisions.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        })
    }

    fn forget<'a>(&'a self, subject: &'a str, group: &'a str) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let key = self.key(group, false, subject);
            self.link
                .run(self.timeout.max(Duration::from_secs(1)), |mut conn| async move {
                    redis::cmd("DEL").arg(&key).query_async::<i64>(&mut conn).await
                })
                .await
                .map(drop)
        })
    }

    fn available(&self) -> bool {
        if self.link.available() {
            true
        } else {
            self.link.stats().degraded_decisions.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_answers_five_integers_per_operation() {
        let a = answers(
            &[0, 3, 7, 10, 2_000_000, 1, 1_500_000, 10, 10, 60_000_000, 2, 0, 0, 10, 0],
            3,
        )
        .unwrap();
        assert_eq!(a[0].outcome, Outcome::Allowed { remaining: 3 });
        assert_eq!(a[0].usage.reset_in, Duration::from_secs(2));
        assert_eq!(
            a[1].outcome,
            Outcome::Denied {
                retry_in: Duration::from_millis(1500)
            }
        );
        assert_eq!(a[2].outcome, Outcome::Never);
        assert!(
            answers(&[0, 1], 1).is_err(),
            "a short answer is an error, not a verdict"
        );
    }
}
