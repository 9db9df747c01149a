// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Keyed GCRA buckets: governor's algorithm over a dashmap store that can
//! look without touching (peek), count (commit), cap and evict.
//!
//! governor decides; this module only supplies the state store. The store's
//! key carries whether a check may write, so one limiter answers both "would
//! this pass?" (asked at MAIL and RCPT, so a client over its limit is refused
//! before it uploads a message) and "count it" (done once, when the MTA is
//! about to accept the message).

use crate::clock::Clock;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The key of a bucket: a 64-bit keyed hash of the normalised identity (or
/// domain). Storing the hash instead of the string keeps an entry at 16 bytes
/// whatever the identity's length, which is what bounds memory per identity.
pub type BucketKey = u64;

/// The shared bucket used by identities that arrive when the store is full.
///
/// At the cap, a new identity is not given a bucket of its own: it shares
/// this one with every other newcomer, so a flood of invented identities is
/// throttled as if it were one sender, and memory stays flat.
pub const OVERFLOW_KEY: BucketKey = 0;

/// Maps an arbitrary 64-bit hash to a bucket key that never collides with
/// [`OVERFLOW_KEY`].
pub fn bucket_key(hash: u64) -> BucketKey {
    if hash == OVERFLOW_KEY { 1 } else { hash }
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It fits; `remaining` more would still fit afterwards.
    Allowed { remaining: u32 },
    /// It does not fit now; it would after `retry_in`.
    Denied { retry_in: Duration },
    /// It can never fit: the weight exceeds the whole burst.
    Never,
}

impl Outcome {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Outcome::Allowed { .. })
    }
}

/// How much of a bucket is in use, for log lines, replies and `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Cells in use now (messages or recipients counted and not yet replenished).
    pub used: u32,
    /// The burst size: how many fit in an empty bucket.
    pub limit: u32,
    /// Time until the bucket is empty again.
    pub reset_in: Duration,
}

/// What the policy needs of a rule's counters, one bucket per key. It is
/// deliberately narrow so that a shared backend for a fleet of MTAs can stand
/// in for the in-memory [`KeyedLimiter`].
pub trait RateBuckets: Send + Sync {
    /// The bucket `key` is counted in, given a cap on tracked keys.
    fn route(&self, key: BucketKey, cap: usize) -> BucketKey;
    /// Would `n` more fit? Changes nothing.
    fn peek(&self, key: BucketKey, n: u32) -> Outcome;
    /// Counts `n` if they fit; counts nothing if they do not.
    fn commit(&self, key: BucketKey, n: u32) -> Outcome;
    /// How full a bucket is.
    fn usage(&self, key: BucketKey) -> Usage;
    /// Empties one bucket.
    fn forget(&self, key: BucketKey);
    /// Drops buckets that are back to empty; returns how many.
    fn evict_idle(&self) -> usize;
    /// Number of keys with a bucket of their own.
    fn tracked(&self) -> usize;
}

/// A key for governor plus whether the check may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Probe {
    key: BucketKey,
    commit: bool,
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BucketMap = DashMap<BucketKey, AtomicU64, BuildHasherDefault<PreHashed>>;

/// The state store: one theoretical arrival time (TAT) per key.
#[derive(Clone, Default)]
struct Buckets {
    inner: Arc<BucketsInner>,
}

#[derive(Default)]
struct BucketsInner {
    map: BucketMap,
    /// Number of keys in `map`, kept here because `DashMap::len` locks every shard.
    tracked: AtomicUsize,
}

impl Buckets {
    fn replace<T, F, E>(cell: &AtomicU64, f: &F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let (decision, next) = f(Some(Nanos::new(prev)))?;
            match cell.compare_exchange_weak(prev, next.as_u64(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(decision),
                Err(current) => prev = current,
            }
        }
    }
}

impl StateStore for Buckets {
    type Key = Probe;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let map = &self.inner.map;
        if !probe.commit {
            let prev = map.get(&probe.key).map(|cell| Nanos::new(cell.load(Ordering::Acquire)));
            return f(prev).map(|(decision, _)| decision);
        }
        if let Some(cell) = map.get(&probe.key) {
            return Self::replace(cell.value(), &f);
        }
        match map.entry(probe.key) {
            Entry::Occupied(cell) => Self::replace(cell.get(), &f),
            Entry::Vacant(slot) => {
                let (decision, next) = f(None)?;
                slot.insert(AtomicU64::new(next.as_u64()));
                self.inner.tracked.fetch_add(1, Ordering::Relaxed);
                Ok(decision)
            }
        }
    }
}

/// One rate (one governor quota) applied per key.
pub struct KeyedLimiter {
    limiter: RateLimiter<Probe, Buckets, Clock, StateInformationMiddleware>,
    buckets: Buckets,
    clock: Clock,
    /// The clock reading just before governor took its own start reading.
    /// Stored TATs are relative to governor's start, which is at most a few
    /// microseconds later; usage and eviction use this as the origin, which
    /// errs by that much towards "idle" (harmless: a few microseconds of
    /// replenishment).
    origin: u64,
    quota: Quota,
}

impl KeyedLimiter {
    pub fn new(quota: Quota, clock: Clock) -> Self {
        let buckets = Buckets::default();
        let origin = clock.elapsed_nanos();
        let limiter = RateLimiter::new(quota, buckets.clone(), clock.clone());
        Self {
            limiter,
            buckets,
            clock,
            origin,
            quota,
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    fn check(&self, probe: Probe, n: u32) -> Outcome {
        let Some(n) = NonZeroU32::new(n) else {
            return Outcome::Allowed {
                remaining: self.usage(probe.key).limit,
            };
        };
        match self.limiter.check_key_n(&probe, n) {
            Ok(Ok(state)) => Outcome::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Ok(Err(not_until)) => Outcome::Denied {
                retry_in: not_until.wait_time_from(governor::clock::Clock::now(&self.clock)),
            },
            Err(_) => Outcome::Never,
        }
    }

    fn frame_now(&self) -> u64 {
        self.clock.elapsed_nanos().saturating_sub(self.origin)
    }
}

impl RateBuckets for KeyedLimiter {
    /// Its own bucket if the key is tracked or there is room for it,
    /// otherwise the shared overflow bucket.
    fn route(&self, key: BucketKey, cap: usize) -> BucketKey {
        let inner = &self.buckets.inner;
        if inner.map.contains_key(&key) || inner.tracked.load(Ordering::Relaxed) < cap {
            key
        } else {
            OVERFLOW_KEY
        }
    }

    fn peek(&self, key: BucketKey, n: u32) -> Outcome {
        self.check(Probe { key, commit: false }, n)
    }

    fn commit(&self, key: BucketKey, n: u32) -> Outcome {
        self.check(Probe { key, commit: true }, n)
    }

    fn usage(&self, key: BucketKey) -> Usage {
        let limit = self.quota.burst_size().get();
        let tat = self
            .buckets
            .inner
            .map
            .get(&key)
            .map(|cell| cell.load(Ordering::Acquire));
        let backlog = tat.map_or(0, |tat| tat.saturating_sub(self.frame_now()));
        let interval = u64::try_from(self.quota.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let used = backlog.div_ceil(interval).min(u64::from(limit));
        Usage {
            used: u32::try_from(used).unwrap_or(limit),
            limit,
            reset_in: Duration::from_nanos(backlog),
        }
    }

    fn forget(&self, key: BucketKey) {
        let inner = &self.buckets.inner;
        if inner.map.remove(&key).is_some() {
            inner.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets keys whose bucket has fully replenished: their state is the
    /// same as a new key's, so nothing is lost.
    fn evict_idle(&self) -> usize {
        let now = self.frame_now();
        let inner = &self.buckets.inner;
        let mut removed = 0;
        inner.map.retain(|_, tat| {
            let keep = tat.load(Ordering::Acquire) > now;
            if !keep {
                removed += 1;
            }
            keep
        });
        inner.tracked.fetch_sub(removed, Ordering::Relaxed);
        if removed > 0 {
            inner.map.shrink_to_fit();
        }
        removed
    }

    fn tracked(&self) -> usize {
        self.buckets.inner.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u32, clock: &Clock) -> KeyedLimiter {
        KeyedLimiter::new(Quota::per_minute(NonZeroU32::new(n).unwrap()), clock.clone())
    }

    #[test]
    fn peek_never_counts() {
        let clock = Clock::manual();
        let lim = per_minute(3, &clock);
        for _ in 0..10 {
            assert!(lim.peek(7, 1).is_allowed());
        }
        assert_eq!(lim.usage(7).used, 0);
        assert_eq!(lim.tracked(), 0);
    }

    #[test]
    fn commit_counts_until_the_burst_then_denies_with_retry_time() {
        let clock = Clock::manual();
        let lim = per_minute(3, &clock);
        assert_eq!(lim.commit(7, 1), Outcome::Allowed { remaining: 2 });
        assert_eq!(lim.commit(7, 2), Outcome::Allowed { remaining: 0 });
        assert!(matches!(lim.peek(7, 1), Outcome::Denied { .. }));
        match lim.commit(7, 1) {
            Outcome::Denied { retry_in } => assert_eq!(retry_in, Duration::from_secs(20)),
            other => panic!("expected a denial, got {other:?}"),
        }
        assert_eq!(
            lim.usage(7),
            Usage {
                used: 3,
                limit: 3,
                reset_in: Duration::from_secs(60)
            }
        );
        clock.advance(Duration::from_secs(20));
        assert!(lim.commit(7, 1).is_allowed());
    }

    #[test]
    fn weight_above_the_burst_can_never_pass() {
        let clock = Clock::manual();
        let lim = per_minute(5, &clock);
        assert_eq!(lim.peek(1, 6), Outcome::Never);
        assert_eq!(lim.commit(1, 6), Outcome::Never);
        assert_eq!(lim.usage(1).used, 0);
    }

    #[test]
    fn keys_are_independent() {
        let clock = Clock::manual();
        let lim = per_minute(1, &clock);
        assert!(lim.commit(1, 1).is_allowed());
        assert!(!lim.commit(1, 1).is_allowed());
        assert!(lim.commit(2, 1).is_allowed());
    }

    #[test]
    fn new_keys_share_the_overflow_bucket_at_the_cap() {
        let clock = Clock::manual();
        let lim = per_minute(2, &clock);
        for key in 1..=3 {
            let routed = lim.route(key, 3);
            assert_eq!(routed, key);
            assert!(lim.commit(routed, 1).is_allowed());
        }
        // Tracked keys keep their own bucket; newcomers share one.
        assert_eq!(lim.route(2, 3), 2);
        assert_eq!(lim.route(4, 3), OVERFLOW_KEY);
        assert_eq!(lim.route(5, 3), OVERFLOW_KEY);
        assert!(lim.commit(OVERFLOW_KEY, 1).is_allowed());
        assert_eq!(lim.tracked(), 4);
    }

    #[test]
    fn idle_keys_are_evicted_once_replenished() {
        let clock = Clock::manual();
        let lim = per_minute(60, &clock);
        for key in 1..=100 {
            assert!(lim.commit(key, 1).is_allowed());
        }
        assert!(lim.commit(1, 30).is_allowed());
        assert_eq!(lim.evict_idle(), 0);
        clock.advance(Duration::from_secs(2));
        assert_eq!(lim.evict_idle(), 99, "keys with one cell replenish in 1 s");
        assert_eq!(lim.tracked(), 1);
        assert_eq!(lim.usage(1).used, 29);
        clock.advance(Duration::from_secs(60));
        assert_eq!(lim.evict_idle(), 1);
        assert_eq!(lim.tracked(), 0);
    }

    #[test]
    fn forgetting_a_key_empties_its_bucket() {
        let clock = Clock::manual();
        let lim = per_minute(1, &clock);
        assert!(lim.commit(5, 1).is_allowed());
        assert!(!lim.peek(5, 1).is_allowed());
        lim.forget(5);
        lim.forget(5);
        assert_eq!(lim.tracked(), 0);
        assert!(lim.commit(5, 1).is_allowed());
    }

    #[test]
    fn bucket_keys_avoid_the_overflow_key() {
        assert_eq!(bucket_key(OVERFLOW_KEY), 1);
        assert_eq!(bucket_key(42), 42);
    }
}
