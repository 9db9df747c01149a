// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Distinct values per key in a sliding window: how many different
//! recipients, recipient domains or client addresses one identity used in
//! the last `W`, with a rule `N/W` letting at most `N` different ones
//! through in any window of length `W`.
//!
//! # Exact up to the limit, bounded memory
//!
//! A key's set keeps, for each value, 32 bits of a keyed hash of it and
//! when it was last used (in tenths of a second): 8 bytes. A value counts
//! until `W` after its last use, so writing again to a correspondent keeps
//! it in (it is still one of the identity's recipients) and never counts it
//! twice. The set never holds more than `N` values: a value beyond that is
//! refused, not stored. So the memory of one key is at most `8·N` bytes
//! (plus the map's overhead), and of a rule at most that times
//! `limits.max_tracked_identities`; past that cap newcomers share the
//! overflow set, as for the rate buckets.
//!
//! The count is exact, not an estimate, but for two different values whose
//! hashes agree in those 32 bits counting as one: for a set of 600 values
//! a chance of about 4·10⁻⁵ that any two do, which can only undercount, in
//! the sender's favour, by one. The hash is keyed with the process's random
//! key, so no sender can aim at a collision.
//!
//! As for the rate buckets, the policy peeks (changes nothing) at MAIL and
//! RCPT and commits once, at the end of an accepted message; a lock rule
//! commits every attempt.

use crate::clock::Clock;
use crate::policy::limiter::{BucketKey, OVERFLOW_KEY, Outcome, PreHashed, Usage};
use dashmap::DashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A value seen: 32 bits of its hash and when it was last used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    value: u32,
    /// Tenths of a second on the clock's monotonic time line.
    at: u32,
}

/// The clock's unit in a [`Seen`], in nanoseconds.
const TICK: u64 = 100_000_000;

/// The part of a value's 64-bit hash a set keeps.
fn short(value: u64) -> u32 {
    (value >> 32) as u32 ^ value as u32
}

/// The sets of one rule: at most `limit` distinct values per key per window.
pub struct DistinctSets {
    limit: u32,
    /// W in ticks ([`TICK`]), at least 1.
    window: u64,
    clock: Clock,
    sets: DashMap<BucketKey, Vec<Seen>, BuildHasherDefault<PreHashed>>,
    /// Number of keys in `sets` (`DashMap::len` locks every shard).
    tracked: AtomicUsize,
}

impl DistinctSets {
    pub fn new(limit: u32, window: Duration, clock: Clock) -> Self {
        Self {
            limit: limit.max(1),
            window: u64::try_from(window.as_nanos() / u128::from(TICK))
                .unwrap_or(u64::MAX)
                .max(1),
            clock,
            sets: DashMap::default(),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Now, in ticks. The monotonic time line starts far from zero (for
    /// restored rate buckets) and a set only compares times a window
    /// apart, so it keeps them modulo 2³² ticks (13 years).
    fn now(&self) -> u32 {
        (self.clock.monotonic_nanos() / TICK) as u32
    }

    fn live(&self, seen: &Seen, now: u32) -> bool {
        u64::from(now.wrapping_sub(seen.at)) < self.window
    }

    /// Time from `now` until `ticks` later.
    fn ticks_from(&self, now: u32, at: u64) -> Duration {
        Duration::from_nanos(at.saturating_sub(u64::from(now)).saturating_mul(TICK))
    }

    /// Its own set if the key is tracked or there is room for it, otherwise
    /// the shared overflow set.
    pub fn route(&self, key: BucketKey, cap: usize) -> BucketKey {
        if self.sets.contains_key(&key) || self.tracked.load(Ordering::Relaxed) < cap {
            key
        } else {
            OVERFLOW_KEY
        }
    }

    /// Would using `values` fit? Changes nothing.
    pub fn peek(&self, key: BucketKey, values: &[u64]) -> Outcome {
        let now = self.now();
        let empty = Vec::new();
        let set = self.sets.get(&key);
        let set = set.as_deref().unwrap_or(&empty);
        self.outcome(set, values, now)
    }

    fn outcome(&self, set: &[Seen], values: &[u64], now: u32) -> Outcome {
        // Ages, in ticks: wrapping differences, as times are kept modulo 2³².
        let ages: Vec<u64> = set
            .iter()
            .filter(|s| self.live(s, now))
            .map(|s| u64::from(now.wrapping_sub(s.at)))
            .collect();
        let new = new_values(set, values, |s| self.live(s, now));
        let used = ages.len() as u64;
        let total = used + new;
        if total <= u64::from(self.limit) {
            let remaining = u64::from(self.limit) - total;
            return Outcome::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            };
        }
        if new > u64::from(self.limit) {
            return Outcome::Never;
        }
        // Room for `new` comes when `total - limit` of the live values
        // have gone out of the window, the oldest first.
        let mut left: Vec<u64> = ages.iter().map(|age| self.window.saturating_sub(*age)).collect();
        left.sort_unstable();
        let nth = usize::try_from(total - u64::from(self.limit) - 1).unwrap_or(usize::MAX);
        let wait = left.get(nth).copied().unwrap_or(0);
        Outcome::Denied {
            retry_in: self.ticks_from(0, wait),
        }
    }

    /// Whether `value` is in the set of `key`, within the window.
    pub fn contains(&self, key: BucketKey, value: u64) -> bool {
        let now = self.now();
        let value = short(value);
        self.sets
            .get(&key)
            .is_some_and(|set| set.iter().any(|s| s.value == value && self.live(s, now)))
    }

    /// Uses `values`: each one already in the set is refreshed, each new one
    /// is added while there is room. Returns what [`DistinctSets::peek`]
    /// would have answered before; when that is not `Allowed`, the values
    /// that did not fit are not stored.
    pub fn commit(&self, key: BucketKey, values: &[u64]) -> Outcome {
        if values.is_empty() {
            return self.peek(key, values);
        }
        let mut set = self.sets.entry(key).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        let now = self.now();
        let outcome = self.outcome(&set, values, now);
        set.retain(|s| self.live(s, now));
        for value in values.iter().map(|v| short(*v)) {
            if let Some(seen) = set.iter_mut().find(|s| s.value == value) {
                seen.at = now;
            } else if set.len() < self.limit as usize {
                set.push(Seen { value, at: now });
            }
        }
        outcome
    }

    /// How many distinct values count now, and when the last one leaves.
    pub fn usage(&self, key: BucketKey) -> Usage {
        let now = self.now();
        let (used, youngest) = self.sets.get(&key).map_or((0, None), |set| {
            let live = set.iter().filter(|s| self.live(s, now));
            let used = live.clone().count();
            (used, live.map(|s| u64::from(now.wrapping_sub(s.at))).min())
        });
        Usage {
            used: u32::try_from(used).unwrap_or(u32::MAX),
            limit: self.limit,
            reset_in: youngest.map_or(Duration::ZERO, |age| {
                self.ticks_from(0, self.window.saturating_sub(age))
            }),
        }
    }

    pub fn forget(&self, key: BucketKey) {
        if self.sets.remove(&key).is_some() {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops the sets with nothing left in the window; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut removed = 0;
        self.sets.retain(|_, set| {
            set.retain(|s| self.live(s, now));
            set.shrink_to_fit();
            let keep = !set.is_empty();
            if !keep {
                removed += 1;
            }
            keep
        });
        self.tracked.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

/// How many different values of `values` are not among the live ones of `set`.
fn new_values(set: &[Seen], values: &[u64], live: impl Fn(&Seen) -> bool) -> u64 {
    let mut new = 0;
    for (i, v) in values.iter().enumerate() {
        let repeated = values[..i].iter().any(|o| short(*o) == short(*v));
        let known = set.iter().any(|s| s.value == short(*v) && live(s));
        if !repeated && !known {
            new += 1;
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(limit: u32, window_s: u64) -> (DistinctSets, Clock) {
        let clock = Clock::manual();
        (
            DistinctSets::new(limit, Duration::from_secs(window_s), clock.clone()),
            clock,
        )
    }

    #[test]
    fn repeated_values_count_once() {
        let (s, _) = sets(3, 60);
        for _ in 0..10 {
            assert!(s.commit(7, &[1, 2, 2, 1]).is_allowed());
        }
        assert_eq!(s.usage(7).used, 2);
        assert!(s.peek(7, &[3]).is_allowed());
        assert!(!s.peek(7, &[3, 4]).is_allowed(), "two new ones do not fit in one place");
    }

    #[test]
    fn a_full_set_refuses_new_values_until_the_oldest_leaves() {
        let (s, clock) = sets(3, 60);
        s.commit(1, &[10]);
        clock.advance(Duration::from_secs(10));
        s.commit(1, &[11, 12]);
        assert_eq!(
            s.peek(1, &[13]),
            Outcome::Denied {
                retry_in: Duration::from_secs(50)
            }
        );
        assert!(s.peek(1, &[11]).is_allowed(), "a known value always fits");
        assert!(!s.commit(1, &[13]).is_allowed());
        assert_eq!(s.usage(1).used, 3, "the refused value is not stored");
        clock.advance(Duration::from_secs(50));
        assert!(s.commit(1, &[13]).is_allowed());
        assert_eq!(s.peek(1, &[20, 21, 22, 23]), Outcome::Never);
    }

    #[test]
    fn using_a_value_again_keeps_it_in_the_window() {
        let (s, clock) = sets(2, 60);
        s.commit(1, &[1, 2]);
        clock.advance(Duration::from_secs(50));
        s.commit(1, &[1]);
        clock.advance(Duration::from_secs(20));
        assert_eq!(s.usage(1).used, 1, "2 left the window, 1 was used again");
        assert_eq!(s.usage(1).reset_in, Duration::from_secs(40));
        assert!(s.commit(1, &[3]).is_allowed());
        assert!(!s.peek(1, &[4]).is_allowed());
    }

    #[test]
    fn no_window_ever_holds_more_than_the_limit() {
        // Random arrivals of random values: in every window of W, at most N
        // distinct values were let through.
        let (s, clock) = sets(5, 100);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut accepted: Vec<(u64, u64)> = Vec::new();
        let mut t = 0;
        for _ in 0..3000 {
            let dt = next() % 20;
            clock.advance(Duration::from_secs(dt));
            t += dt;
            let v = next() % 12;
            if s.commit(1, &[v]).is_allowed() {
                accepted.push((t, v));
            }
        }
        for &(start, _) in &accepted {
            let mut seen: Vec<u64> = accepted
                .iter()
                .filter(|(at, _)| *at >= start && *at < start + 100)
                .map(|(_, v)| *v)
                .collect();
            seen.sort_unstable();
            seen.dedup();
            assert!(seen.len() <= 5, "window from {start}: {seen:?}");
        }
    }

    #[test]
    fn a_value_costs_eight_bytes() {
        assert_eq!(std::mem::size_of::<Seen>(), 8);
    }

    #[test]
    fn memory_per_key_is_bounded_by_the_limit() {
        let (s, _) = sets(50, 3600);
        for v in 0..10_000 {
            s.commit(9, &[v]);
        }
        assert_eq!(s.sets.get(&9).map(|set| set.len()), Some(50));
        assert!(s.sets.get(&9).is_some_and(|set| set.capacity() <= 64));
    }

    #[test]
    fn idle_sets_are_evicted_and_newcomers_overflow_at_the_cap() {
        let (s, clock) = sets(5, 60);
        s.commit(1, &[1]);
        s.commit(2, &[1]);
        assert_eq!(s.route(3, 2), OVERFLOW_KEY);
        assert_eq!(s.route(1, 2), 1);
        clock.advance(Duration::from_secs(61));
        assert_eq!(s.evict_idle(), 2);
        assert_eq!(s.tracked(), 0);
        assert_eq!(s.route(3, 2), 3);
        s.commit(4, &[1]);
        s.forget(4);
        assert_eq!(s.tracked(), 0);
    }
}
