// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Keyed rate buckets with a strict bound: a rule `N/W` lets at most `N`
//! through in any window of length `W`, whatever the timing of the mail.
//!
//! # The arithmetic
//!
//! This is what every backend must compute (a shared one would do it in a
//! Lua script), so it is spelled out here and kept to integers. Times are
//! nanoseconds on the limiter's monotonic clock. A rule has a count `N`, a
//! window `W`, a slot interval `T = ceil(W / N)` and a burst `B` (`N` unless
//! configured lower). A bucket ([`Cell`]) holds five integers, all zero for a
//! key never seen: the schedule `tat` and `prev_tat`, the end of the current
//! window `end`, and the counts `prev` and `cur`.
//!
//! A bucket keeps two upper bounds on how much it let through in the last
//! `W`, and lets `n` more through when the lower of them leaves room:
//!
//! - **The schedule.** `tat` is GCRA's theoretical arrival time with one slot
//!   every `T`: each unit takes the next free slot, `tat = max(tat, now) +
//!   n·T`. A unit is taken to be in its slot, which is never earlier than it
//!   arrived, and a slot counts until `W` after it: at `now`,
//!   `slots(tat) = ceil((tat - T + W - now) / T)` still count (0 if that is
//!   not positive). Mail spaced at least `T` apart never holds more than
//!   `N - 1`, so an identity that sends steadily at the rate is never
//!   refused, however long it keeps at it.
//! - **The window count.** `cur` counts what was let through in the window
//!   `(end - W, end]`, `prev` what was let through in the window before it.
//!   `cur` counts in full. What is left of `prev` is at most `prev` and at
//!   most `slots(prev_tat)`, where `prev_tat` is `tat` as it stood when that
//!   window closed (nothing let through later is in it), and nothing from
//!   `end` on. At `now > end` the windows move on by one (`prev = cur`,
//!   `prev_tat = tat`, `cur = 0`, `end += W`) if `now <= end + W` and
//!   `cur > 0`; otherwise both counts are 0. A burst
//!   after a pause therefore comes back as its window closes: all of it a
//!   full `W` later when it came at one instant, one slot at a time from
//!   then on when it was spread out.
//!
//! `used = min(cur + what is left of prev, slots(tat))`. When `used` is 0,
//! nothing let through is inside the last `W`, and the window is anchored
//! afresh at the message (`end = now`, `prev = cur = 0`). A request of `n`
//! fits if `n <= B`, `used + n <= N` and, with a burst below `N`, GCRA's own
//! test `max(tat, now) + n·T - now <= B·T`. Counting it adds `n` to `cur` and
//! moves `tat`.
//!
//! Why the bound holds: each bound only ever overestimates how much was let
//! through in `(now - W, now]` (a unit is in its window and in a slot no
//! earlier than its arrival, and counts until that window or slot is a full
//! `W` behind), so `used + n <= N` keeps the true count within `N`. In any
//! window of length `W`, the last message let through saw everything before
//! it in that window, so the whole window holds at most `N`. The property
//! test `any_window_of_w_holds_at_most_n` checks it over random arrival
//! times and weights.
//!
//! With a burst `B < N`, GCRA's test also holds, so any span of length `L`
//! holds at most `B + ceil(L / T) - 1`: at most `B` at once, then one every
//! `T`; still at most `N` in any `W`.
//!
//! Both bounds are conservative: they refuse some mail that an exact log of
//! every message's time would let through (mostly bursty mail at more than
//! half the rate), in exchange for a fixed-size bucket. Without a burst
//! they never refuse `n` more when the last `2W` held at most `N - n`, nor
//! single messages spaced at least `T` apart.
//!
//! The module only supplies the arithmetic and its state store; the policy
//! decides what to peek and what to commit. A peek (asked at MAIL and RCPT,
//! so a client over its limit is refused before it uploads a message)
//! changes nothing; a commit (done once, when the MTA is about to accept the
//! message) counts only what fits.

use crate::clock::Clock;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The key of a bucket: a 64-bit keyed hash of the normalised identity (or
/// domain). Storing the hash instead of the string keeps an entry small
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
    /// It can never fit: the weight exceeds the count (or the burst).
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
    /// What still counts against the limit (messages or recipients).
    pub used: u32,
    /// The rule's count; with a burst below it, the burst when that is
    /// what is closer to full.
    pub limit: u32,
    /// Time until nothing counts any more (the bucket is idle).
    pub reset_in: Duration,
}

/// What a rule allows one key: at most `count` in any window of `window`
/// and, with a burst below the count, at most `burst` at once and then one
/// every `window / count`. See the module documentation for the arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// N.
    count: u32,
    /// W, in nanoseconds, at least 1.
    window: u64,
    /// T = ceil(W / N), in nanoseconds, at least 1.
    interval: u64,
    /// B, between 1 and N.
    burst: u32,
}

impl Limit {
    /// A limit of `count` per `window`. A `burst` of `count` or more (or
    /// none) adds nothing; the configuration refuses one above the count.
    pub fn new(count: NonZeroU32, window: Duration, burst: Option<NonZeroU32>) -> Self {
        let count = count.get();
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self {
            count,
            window,
            interval: window.div_ceil(u64::from(count)).max(1),
            burst: burst.map_or(count, |b| b.get().min(count)),
        }
    }

    /// N: the most that fits in any window.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// W.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window)
    }

    /// B: the most that fits at once (the count unless configured lower).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// T: the steady rate's spacing, `ceil(W / N)`.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// W and T in whole microseconds, the unit of a shared store's script:
    /// `(ceil(W / 1µs), ceil(W_µs / N))`. Equal to this limit's own when W
    /// is a whole number of microseconds divisible by N.
    pub fn micros(&self) -> (u64, u64) {
        let window = self.window.div_ceil(1000).max(1);
        (window, window.div_ceil(u64::from(self.count)).max(1))
    }

    /// This limit with W and T in microseconds instead of nanoseconds, for
    /// checking a shared store's arithmetic against this module's.
    pub fn in_micros(&self) -> Limit {
        let (window, interval) = self.micros();
        Limit {
            window,
            interval,
            ..*self
        }
    }

    fn shaped(&self) -> bool {
        self.burst < self.count
    }

    /// How many of the schedule's slots still count at `now`.
    fn scheduled(&self, tat: u64, now: u64) -> u64 {
        let horizon = tat.saturating_add(self.window);
        let start = now.saturating_add(self.interval);
        if horizon <= start {
            0
        } else {
            (horizon - start).div_ceil(self.interval)
        }
    }

    /// From when on at most `k` of the schedule's slots still count.
    fn slots_down_to(&self, tat: u64, k: u64) -> u64 {
        tat.saturating_add(self.window)
            .saturating_sub(k.saturating_add(1).saturating_mul(self.interval))
    }

    /// What still counts against the limit in `c`, already rolled to `now`:
    /// the lower of the window count and the schedule. What is left of the
    /// previous window is also bounded by the schedule as it stood when that
    /// window closed, since nothing counted later is in it.
    fn used(&self, c: &Cell, now: u64) -> u64 {
        let prev = if now < c.end {
            u64::from(c.prev).min(self.scheduled(c.prev_tat, now))
        } else {
            0
        };
        (u64::from(c.cur) + prev).min(self.scheduled(c.tat, now))
    }

    /// `cell` as it stands at `now`: windows rolled forward (or anchored
    /// afresh when nothing counts), and what counts against the limit.
    fn view(&self, cell: Cell, now: u64) -> (Cell, u64) {
        let mut c = cell;
        if now > c.end {
            if c.cur > 0 && now - c.end <= self.window {
                c.prev = c.cur;
                c.prev_tat = c.tat;
                c.end = c.end.saturating_add(self.window);
            } else {
                c.prev = 0;
            }
            c.cur = 0;
        }
        let used = self.used(&c, now);
        if used == 0 {
            c.end = now;
            c.prev = 0;
            c.cur = 0;
        }
        (c, used)
    }

    /// Whether `n` more fit in `cell` at `now`, and if so the cell with
    /// them counted.
    pub fn check(&self, cell: Cell, now: u64, n: u32) -> (Outcome, Option<Cell>) {
        if n > self.burst {
            return (Outcome::Never, None);
        }
        let (c, used) = self.view(cell, now);
        let (count, n64) = (u64::from(self.count), u64::from(n));
        let burst_room = u64::from(self.burst).saturating_mul(self.interval);
        let next_tat = c.tat.max(now).saturating_add(n64.saturating_mul(self.interval));
        let fits_count = used + n64 <= count;
        let fits_burst = !self.shaped() || next_tat - now <= burst_room;
        if fits_count && fits_burst {
            let next = Cell {
                tat: next_tat,
                cur: c.cur.saturating_add(n),
                ..c
            };
            let mut remaining = count.saturating_sub(self.used(&next, now));
            if self.shaped() {
                remaining = remaining.min(burst_room.saturating_sub(next_tat - now) / self.interval);
            }
            let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
            return (Outcome::Allowed { remaining }, Some(next));
        }
        let mut at = now;
        if !fits_count {
            // The window count has room once enough of `prev` is over (all
            // of it at `end`) or, if `cur` alone leaves none, once `cur` is
            // over too; the schedule once `N - n` slots at most still count.
            let cur = u64::from(c.cur);
            let by_window = if cur + n64 <= count {
                c.end.min(self.slots_down_to(c.prev_tat, count - cur - n64))
            } else {
                c.end.saturating_add(self.window)
            };
            at = by_window.min(self.slots_down_to(c.tat, count - n64));
        }
        if !fits_burst {
            let by_burst = c
                .tat
                .saturating_add(n64.saturating_mul(self.interval))
                .saturating_sub(burst_room);
            at = at.max(by_burst);
        }
        let retry_in = Duration::from_nanos(at.saturating_sub(now));
        (Outcome::Denied { retry_in }, None)
    }

    /// How full `cell` is at `now`.
    pub fn usage(&self, cell: Cell, now: u64) -> Usage {
        let (c, used) = self.view(cell, now);
        let mut empty_at = now;
        if used > 0 {
            let by_window = if c.cur > 0 {
                c.end.saturating_add(self.window)
            } else {
                c.end.min(self.slots_down_to(c.prev_tat, 0))
            };
            empty_at = by_window.min(self.slots_down_to(c.tat, 0));
        }
        // Both bounds may overestimate past the count for a while (the true
        // count never goes past it), so the figure shown stops at the count.
        let mut usage = Usage {
            used: u32::try_from(used.min(u64::from(self.count))).unwrap_or(self.count),
            limit: self.count,
            reset_in: Duration::ZERO,
        };
        if self.shaped() {
            empty_at = empty_at.max(c.tat);
            let backlog = c.tat.saturating_sub(now).div_ceil(self.interval);
            // Report the burst when it is the fuller of the two.
            if u128::from(backlog) * u128::from(self.count) > u128::from(used) * u128::from(self.burst) {
                usage.used = u32::try_from(backlog).unwrap_or(u32::MAX).min(self.burst);
                usage.limit = self.burst;
            }
        }
        usage.reset_in = Duration::from_nanos(empty_at.saturating_sub(now));
        usage
    }

    /// Whether `cell` is at `now` the same as a key never seen: nothing
    /// counts and, with a burst, no backlog is left.
    pub fn is_idle(&self, cell: Cell, now: u64) -> bool {
        self.view(cell, now).1 == 0 && (!self.shaped() || cell.tat <= now)
    }
}

/// The state of one bucket; all zero for a key never seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// The schedule: GCRA's theoretical arrival time.
    pub tat: u64,
    /// The schedule as it stood when the previous window closed.
    pub prev_tat: u64,
    /// The end (inclusive) of the current window.
    pub end: u64,
    /// Counted in the window before the current one.
    pub prev: u32,
    /// Counted in the current window.
    pub cur: u32,
}

/// A [`Cell`] with its times taken relative to one instant, for a save
/// that is restored on another monotonic clock (a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedCell {
    /// [`Cell::tat`] minus the instant, in nanoseconds (negative: before it).
    pub tat: i64,
    /// [`Cell::prev_tat`] minus the instant.
    pub prev_tat: i64,
    /// [`Cell::end`] minus the instant.
    pub end: i64,
    pub prev: u32,
    pub cur: u32,
}

impl Cell {
    /// The cell with its times relative to `now`.
    pub fn saved_at(&self, now: u64) -> SavedCell {
        let rel = |t: u64| {
            let d = i128::from(t) - i128::from(now);
            i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
        };
        SavedCell {
            tat: rel(self.tat),
            prev_tat: rel(self.prev_tat),
            end: rel(self.end),
            prev: self.prev,
            cur: self.cur,
        }
    }
}

impl SavedCell {
    /// The cell, saved `ago` before `now`, on the time line of `now`. A
    /// time that would fall before zero becomes zero, which can only make
    /// it count longer; see [`crate::clock::MONOTONIC_ORIGIN`] for why that
    /// takes decades.
    pub fn restored(&self, now: u64, ago: Duration) -> Cell {
        let base = i128::from(now) - i128::try_from(ago.as_nanos()).unwrap_or(i128::MAX);
        let abs = |rel: i64| {
            let t = base.saturating_add(i128::from(rel));
            u64::try_from(t.max(0)).unwrap_or(u64::MAX)
        };
        Cell {
            tat: abs(self.tat),
            prev_tat: abs(self.prev_tat),
            end: abs(self.end),
            prev: self.prev,
            cur: self.cur,
        }
    }
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
    /// The buckets that are not idle, with their times relative to now, to
    /// carry them over a restart. A backend that keeps its counters outside
    /// the process has nothing to save.
    fn save(&self) -> Vec<(BucketKey, SavedCell)> {
        Vec::new()
    }
    /// Puts back buckets that [`RateBuckets::save`] gave `ago` ago (in wall
    /// time), replacing what those keys hold; returns how many were put
    /// back, leaving out those that have gone idle since.
    fn restore(&self, cells: &[(BucketKey, SavedCell)], ago: Duration) -> usize {
        let _ = (cells, ago);
        0
    }
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

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

type BucketMap = DashMap<BucketKey, Cell, BuildHasherDefault<PreHashed>>;

/// One [`Limit`] applied per key, in memory.
///
/// A commit updates its cell under the map shard's write lock (the four
/// integers change together); a peek copies the cell under the read lock.
/// Both hold the lock for a few arithmetic operations only.
pub struct KeyedLimiter {
    limit: Limit,
    clock: Clock,
    map: BucketMap,
    /// Number of keys in `map`, kept here because `DashMap::len` locks every shard.
    tracked: AtomicUsize,
}

impl KeyedLimiter {
    pub fn new(limit: Limit, clock: Clock) -> Self {
        Self {
            limit,
            clock,
            map: BucketMap::default(),
            tracked: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn now(&self) -> u64 {
        self.clock.monotonic_nanos()
    }

    fn cell(&self, key: BucketKey) -> Cell {
        self.map.get(&key).map(|c| *c).unwrap_or_default()
    }
}

impl RateBuckets for KeyedLimiter {
    /// Its own bucket if the key is tracked or there is room for it,
    /// otherwise the shared overflow bucket.
    fn route(&self, key: BucketKey, cap: usize) -> BucketKey {
        if self.map.contains_key(&key) || self.tracked.load(Ordering::Relaxed) < cap {
            key
        } else {
            OVERFLOW_KEY
        }
    }

    fn peek(&self, key: BucketKey, n: u32) -> Outcome {
        let cell = self.cell(key);
        self.limit.check(cell, self.now(), n).0
    }

    fn commit(&self, key: BucketKey, n: u32) -> Outcome {
        if n == 0 {
            return self.peek(key, 0);
        }
        // The clock is read under the lock, so a key's cell only ever sees
        // time move forward.
        match self.map.entry(key) {
            Entry::Occupied(mut slot) => {
                let (outcome, next) = self.limit.check(*slot.get(), self.now(), n);
                if let Some(next) = next {
                    *slot.get_mut() = next;
                }
                outcome
            }
            Entry::Vacant(slot) => {
                let (outcome, next) = self.limit.check(Cell::default(), self.now(), n);
                if let Some(next) = next {
                    slot.insert(next);
                    self.tracked.fetch_add(1, Ordering::Relaxed);
                }
                outcome
            }
        }
    }

    fn usage(&self, key: BucketKey) -> Usage {
        let cell = self.cell(key);
        self.limit.usage(cell, self.now())
    }

    fn forget(&self, key: BucketKey) {
        if self.map.remove(&key).is_some() {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets keys whose bucket is idle: their state is the same as a new
    /// key's, so nothing is lost.
    fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut removed = 0;
        self.map.retain(|_, cell| {
            let keep = !self.limit.is_idle(*cell, now);
            if !keep {
                removed += 1;
            }
            keep
        });
        self.tracked.fetch_sub(removed, Ordering::Relaxed);
        if removed > 0 {
            self.map.shrink_to_fit();
        }
        removed
    }

    fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn save(&self) -> Vec<(BucketKey, SavedCell)> {
        let now = self.now();
        self.map
            .iter()
            .filter(|c| !self.limit.is_idle(*c.value(), now))
            .map(|c| (*c.key(), c.value().saved_at(now)))
            .collect()
    }

    fn restore(&self, cells: &[(BucketKey, SavedCell)], ago: Duration) -> usize {
        let now = self.now();
        let mut restored = 0;
        for &(key, saved) in cells {
            let cell = saved.restored(now, ago);
            if self.limit.is_idle(cell, now) {
                continue;
            }
            if self.map.insert(key, cell).is_none() {
                self.tracked.fetch_add(1, Ordering::Relaxed);
            }
            restored += 1;
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn limit(n: u32, window: Duration, burst: Option<u32>) -> Limit {
        Limit::new(
            NonZeroU32::new(n).unwrap(),
            window,
            burst.map(|b| NonZeroU32::new(b).unwrap()),
        )
    }

    fn per_minute(n: u32, clock: &Clock) -> KeyedLimiter {
        KeyedLimiter::new(limit(n, MINUTE, None), clock.clone())
    }

    fn retry_in(outcome: Outcome) -> Duration {
        match outcome {
            Outcome::Denied { retry_in } => retry_in,
            other => panic!("expected a denial, got {other:?}"),
        }
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
    fn commit_counts_until_the_count_then_denies_for_the_rest_of_the_window() {
        let clock = Clock::manual();
        let lim = per_minute(3, &clock);
        assert_eq!(lim.commit(7, 1), Outcome::Allowed { remaining: 2 });
        assert_eq!(lim.commit(7, 2), Outcome::Allowed { remaining: 0 });
        assert!(matches!(lim.peek(7, 1), Outcome::Denied { .. }));
        // 3 in the window already: the 4th must wait until the window is
        // over, not one slot (20 s, which would make 4 in a minute).
        assert_eq!(retry_in(lim.commit(7, 1)), MINUTE);
        assert_eq!(
            lim.usage(7),
            Usage {
                used: 3,
                limit: 3,
                reset_in: MINUTE
            }
        );
        clock.advance(Duration::from_secs(20));
        assert_eq!(retry_in(lim.commit(7, 1)), Duration::from_secs(40));
        clock.advance(Duration::from_secs(40) - Duration::from_nanos(1));
        assert!(!lim.commit(7, 1).is_allowed(), "1 ns before the window is over");
        clock.advance(Duration::from_nanos(1));
        assert_eq!(lim.commit(7, 3), Outcome::Allowed { remaining: 0 });
    }

    #[test]
    fn weight_above_the_count_can_never_pass() {
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
    fn idle_keys_are_evicted_once_nothing_counts() {
        let clock = Clock::manual();
        let lim = per_minute(60, &clock);
        for key in 1..=100 {
            assert!(lim.commit(key, 1).is_allowed());
        }
        clock.advance(Duration::from_secs(30));
        assert!(lim.commit(1, 30).is_allowed());
        assert_eq!(lim.evict_idle(), 0);
        // What was counted counts for a whole window, not one slot.
        clock.advance(Duration::from_secs(29));
        assert_eq!(lim.evict_idle(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(lim.evict_idle(), 99, "counted at 0 s, over at 60 s");
        assert_eq!(lim.tracked(), 1);
        assert_eq!(lim.usage(1).used, 30);
        // Its 30, counted at 30 s, took the schedule's slots 30..59 s, which
        // are over one a second from 90 s.
        clock.advance(Duration::from_secs(30));
        assert_eq!(lim.usage(1).used, 29);
        clock.advance(Duration::from_secs(28));
        assert_eq!(lim.evict_idle(), 0);
        clock.advance(Duration::from_secs(1));
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
    fn saved_buckets_restore_on_a_new_clock_moved_by_the_time_between() {
        let clock = Clock::manual();
        clock.advance(Duration::from_secs(5000));
        let lim = per_minute(3, &clock);
        assert!(lim.commit(7, 3).is_allowed());
        assert!(lim.commit(8, 1).is_allowed());
        clock.advance(Duration::from_secs(30));
        assert!(lim.commit(9, 2).is_allowed());
        let mut saved = lim.save();
        saved.sort_by_key(|&(k, _)| k);
        assert_eq!(saved.iter().map(|&(k, _)| k).collect::<Vec<_>>(), [7, 8, 9]);

        // A new process: its clock starts again, 20 s of wall time later.
        let clock = Clock::manual();
        let lim = per_minute(3, &clock);
        assert_eq!(lim.restore(&saved, Duration::from_secs(20)), 3);
        assert_eq!(lim.tracked(), 3);
        // Key 7 filled its window 50 s ago: 10 s to go, to the nanosecond.
        assert_eq!(retry_in(lim.peek(7, 1)), Duration::from_secs(10));
        assert_eq!(lim.usage(9).used, 2);
        assert_eq!(lim.usage(9).reset_in, Duration::from_secs(40));
        clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
        assert!(!lim.commit(7, 1).is_allowed());
        clock.advance(Duration::from_nanos(1));
        assert_eq!(lim.commit(7, 3), Outcome::Allowed { remaining: 0 });

        // What went idle while the daemon was down is left out.
        let lim = per_minute(3, &Clock::manual());
        assert_eq!(lim.restore(&saved, Duration::from_secs(60)), 0);
        assert_eq!(lim.tracked(), 0);
        // An idle bucket is not saved.
        let clock = Clock::manual();
        let lim = per_minute(3, &clock);
        assert!(lim.commit(1, 1).is_allowed());
        clock.advance(MINUTE);
        assert!(lim.save().is_empty());
    }

    #[test]
    fn saved_times_out_of_range_clamp_to_counting_longer() {
        let cell = Cell {
            tat: u64::MAX,
            prev_tat: 0,
            end: 5,
            prev: 1,
            cur: 2,
        };
        let saved = cell.saved_at(1 << 60);
        assert_eq!(
            (saved.tat, saved.prev_tat, saved.end),
            (i64::MAX, -(1 << 60), 5 - (1 << 60))
        );
        let back = saved.restored(10, Duration::from_secs(1));
        assert_eq!((back.prev_tat, back.end, back.prev, back.cur), (0, 0, 1, 2));
        assert_eq!(saved.restored(1 << 60, Duration::ZERO).end, 5);
    }

    #[test]
    fn bucket_keys_avoid_the_overflow_key() {
        assert_eq!(bucket_key(OVERFLOW_KEY), 1);
        assert_eq!(bucket_key(42), 42);
    }

    #[test]
    fn limits_derive_the_interval_and_cap_the_burst() {
        let l = limit(500, HOUR, None);
        assert_eq!((l.count(), l.burst(), l.window()), (500, 500, HOUR));
        assert_eq!(l.interval(), Duration::from_millis(7200));
        assert_eq!(limit(500, HOUR, Some(50)).burst(), 50);
        assert_eq!(
            limit(500, HOUR, Some(900)).burst(),
            500,
            "a burst adds nothing past the count"
        );
        // Rounded up, so N slots never take less than the window.
        assert_eq!(limit(7, MINUTE, None).interval(), Duration::from_nanos(8_571_428_572));
    }

    /// Sends as key 1, as fast as the limiter allows, retrying exactly when
    /// told, for `span`; returns how many got through.
    fn greedy(lim: &KeyedLimiter, clock: &Clock, span: Duration) -> u32 {
        let start = clock.elapsed_nanos();
        let end = start + span.as_nanos() as u64;
        let mut sent = 0;
        while clock.elapsed_nanos() < end {
            match lim.commit(1, 1) {
                Outcome::Allowed { .. } => sent += 1,
                Outcome::Denied { retry_in } => clock.advance(retry_in),
                Outcome::Never => unreachable!(),
            }
        }
        sent
    }

    /// The issue this design answers: GCRA with a burst of N and a refill
    /// of N per W let almost 2N through in the first W after a pause.
    #[test]
    fn a_greedy_sender_gets_the_count_per_window_not_twice_it() {
        for (n, window) in [(300, HOUR), (1000, DAY), (30, MINUTE)] {
            let clock = Clock::manual();
            let lim = KeyedLimiter::new(limit(n, window, None), clock.clone());
            assert_eq!(greedy(&lim, &clock, window), n, "{n} per {window:?}, first window");
            // ... and it keeps to the count in every later window.
            assert_eq!(greedy(&lim, &clock, window * 3), n * 3, "{n} per {window:?}");
        }
    }

    #[test]
    fn a_burst_after_a_pause_comes_back_exactly_a_window_later() {
        let clock = Clock::manual();
        let lim = KeyedLimiter::new(limit(300, HOUR, None), clock.clone());
        clock.advance(Duration::from_secs(5000));
        assert_eq!(lim.commit(1, 300), Outcome::Allowed { remaining: 0 });
        clock.advance(HOUR - Duration::from_nanos(1));
        assert_eq!(retry_in(lim.peek(1, 1)), Duration::from_nanos(1));
        clock.advance(Duration::from_nanos(1));
        assert!(lim.commit(1, 300).is_allowed(), "the whole count, a window later");
    }

    #[test]
    fn steady_mail_at_the_rate_is_never_refused() {
        for (n, window) in [(30, MINUTE), (7, MINUTE), (300, HOUR), (1000, DAY)] {
            let l = limit(n, window, None);
            let clock = Clock::manual();
            let lim = KeyedLimiter::new(l, clock.clone());
            for i in 0..(5 * n) {
                assert!(lim.commit(1, 1).is_allowed(), "{n} per {window:?}: message {i}");
                clock.advance(l.interval());
            }
            // Faster than the rate for a whole window is refused.
            let burst_after = greedy(&lim, &clock, window);
            assert!(burst_after <= n, "{burst_after}");
        }
    }

    /// Poisson arrivals (no two spaced alike) below the rate: the
    /// conservative count must not turn into refusals of honest mail. (At
    /// 90 % of the rate about 1.6 % are refused; an exact log of every
    /// message's time would refuse about 0.1 %.)
    #[test]
    fn random_mail_below_the_rate_is_seldom_refused() {
        for (share, most_refused) in [(0.5, 0), (0.7, 5), (0.9, 300)] {
            let l = limit(300, HOUR, None);
            let clock = Clock::manual();
            let lim = KeyedLimiter::new(l, clock.clone());
            let mut rng = Rng(share as u64 + 5);
            let mean = HOUR.as_secs_f64() / (300.0 * share);
            let mut refused = 0;
            for _ in 0..12_000 {
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                clock.advance(Duration::from_secs_f64(-(1.0 - u).ln() * mean));
                refused += u32::from(!lim.commit(1, 1).is_allowed());
            }
            assert!(
                refused <= most_refused,
                "{share} of the rate: {refused} of 12000 refused"
            );
        }
    }

    #[test]
    fn a_mail_with_many_recipients_fits_after_light_use() {
        // 100 recipients an hour; 4 an hour for a day, then a reply-all to 60.
        let clock = Clock::manual();
        let lim = KeyedLimiter::new(limit(100, HOUR, None), clock.clone());
        for _ in 0..(24 * 4) {
            assert!(lim.commit(1, 1).is_allowed());
            clock.advance(Duration::from_secs(900));
        }
        assert!(lim.commit(1, 60).is_allowed());
        // 3 were sent in the last hour; the 4 of the hour before may count too.
        let used = lim.usage(1).used;
        assert!((63..=67).contains(&used), "{used}");
    }

    #[test]
    fn a_burst_below_the_count_paces_the_rest() {
        let clock = Clock::manual();
        let l = limit(300, HOUR, Some(50));
        let lim = KeyedLimiter::new(l, clock.clone());
        assert_eq!(lim.commit(1, 50), Outcome::Allowed { remaining: 0 });
        assert_eq!(retry_in(lim.peek(1, 1)), Duration::from_secs(12));
        assert_eq!(
            lim.usage(1),
            Usage {
                used: 50,
                limit: 50,
                reset_in: HOUR
            }
        );
        assert_eq!(lim.commit(1, 51), Outcome::Never);
        clock.advance(Duration::from_secs(12));
        assert!(lim.commit(1, 1).is_allowed());
        assert!(!lim.commit(1, 1).is_allowed());
        // 50 at once, then one every 12 s: 300 in an hour is reached at
        // 50 + 250 * 12 s = 3000 s, and that is all until the window is over.
        assert_eq!(greedy(&lim, &clock, HOUR - Duration::from_secs(12)), 249);
    }

    /// A deterministic pseudo-random generator (splitmix64): the property
    /// tests are the same on every run, and a failure names its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A gap between two arrivals: bursts, bursts' edges, the rate's
    /// spacing, anything up to the window, idle spells.
    fn gap(rng: &mut Rng, l: &Limit) -> u64 {
        let (t, w) = (l.interval, l.window);
        match rng.below(100) {
            0..=34 => 0,
            35..=49 => rng.below(t / 8 + 2),
            50..=69 => rng.below(2 * t + 1),
            70..=79 => t + rng.below(3) - 1,
            80..=94 => rng.below(w + 1),
            _ => w + rng.below(2 * w),
        }
    }

    fn weight(rng: &mut Rng, l: &Limit) -> u32 {
        match rng.below(10) {
            0..=5 => 1,
            6..=8 => 1 + rng.below(u64::from(l.count)) as u32,
            _ => 1 + rng.below(u64::from(l.count) + 2) as u32,
        }
    }

    /// What got through: (time, units), oldest first, trimmed to what a
    /// check can still need.
    struct Admitted {
        log: VecDeque<(u64, u32)>,
        keep: u64,
    }

    impl Admitted {
        fn push(&mut self, at: u64, n: u32) {
            self.log.push_back((at, n));
            while self.log.front().is_some_and(|&(t, _)| t + self.keep < at) {
                self.log.pop_front();
            }
        }

        /// Units let through in `(at - span, at]` (at `at` alone for 0).
        fn within(&self, at: u64, span: u64) -> u64 {
            // The log is in time order and ends at `at`.
            self.log
                .iter()
                .rev()
                .take_while(|&&(t, _)| if span == 0 { t == at } else { t + span > at })
                .map(|&(_, n)| u64::from(n))
                .sum()
        }
    }

    /// Drives one key with random arrivals and weights, with peeks, greedy
    /// retries at exactly `retry_in` and evictions, and checks after every
    /// message let through that no window of `W` ending there holds more
    /// than `N`, and `check_span` for any other bound.
    fn drive(l: Limit, seed: u64, steps: usize, mut check_span: impl FnMut(&Admitted, u64)) {
        let mut rng = Rng(seed);
        let clock = Clock::manual();
        clock.advance(Duration::from_nanos(rng.below(l.window)));
        let lim = KeyedLimiter::new(l, clock.clone());
        let mut admitted = Admitted {
            log: VecDeque::new(),
            keep: l.window.saturating_mul(2),
        };
        let mut retry = None;
        for step in 0..steps {
            match retry.take() {
                Some(r) => clock.advance(r),
                None => clock.advance(Duration::from_nanos(gap(&mut rng, &l))),
            }
            if rng.below(20) == 0 {
                lim.evict_idle();
            }
            let n = weight(&mut rng, &l);
            let peeked = lim.peek(3, n);
            let outcome = lim.commit(3, n);
            assert_eq!(peeked, outcome, "seed {seed} step {step}: peek and commit disagree");
            match outcome {
                Outcome::Allowed { .. } => {
                    let now = clock.elapsed_nanos();
                    admitted.push(now, n);
                    let in_window = admitted.within(now, l.window);
                    assert!(
                        in_window <= u64::from(l.count),
                        "seed {seed} step {step}: {in_window} let through in a window of {:?}, limit {}",
                        l.window(),
                        l.count
                    );
                    check_span(&admitted, now);
                    assert!(lim.usage(3).used <= l.count);
                }
                Outcome::Denied { retry_in } => {
                    assert!(!retry_in.is_zero(), "seed {seed} step {step}");
                    assert!(n <= l.burst);
                    // A greedy sender comes back exactly when told to.
                    if rng.below(3) == 0 {
                        retry = Some(retry_in);
                    }
                }
                Outcome::Never => assert!(n > l.burst, "seed {seed} step {step}"),
            }
        }
    }

    const LIMITS: [(u32, Duration); 8] = [
        (1, MINUTE),
        (3, MINUTE),
        (7, MINUTE),
        (30, MINUTE),
        (300, HOUR),
        (1000, DAY),
        (5, Duration::from_millis(1)),
        (64, Duration::from_nanos(1000)),
    ];

    /// The promise of the rule syntax: with the default settings, `N/W` lets
    /// at most `N` through in any window of length `W`, whatever the
    /// arrival times and weights.
    #[test]
    fn any_window_of_w_holds_at_most_n() {
        for (i, (n, window)) in LIMITS.into_iter().enumerate() {
            for seed in 0..4 {
                drive(limit(n, window, None), seed * 1000 + i as u64, 10_000, |_, _| {});
            }
        }
    }

    /// With a burst `B` below the count: at most `B` at once and then one
    /// per interval (`B + ceil(L / T) - 1` in any span `L`), and still at
    /// most `N` in any window.
    #[test]
    fn with_a_burst_any_span_holds_at_most_the_burst_plus_one_per_interval() {
        for (i, (n, window)) in LIMITS.into_iter().enumerate() {
            for seed in 0..4 {
                let mut rng = Rng(seed);
                let b = 1 + rng.below(u64::from(n)) as u32;
                let l = limit(n, window, Some(b));
                let t = l.interval;
                let spans = [0, 1, t / 2, t, 3 * t + 1, l.window / 2, l.window];
                drive(l, seed * 1000 + i as u64, 10_000, |admitted, now| {
                    for span in spans {
                        let got = admitted.within(now, span);
                        let bound = u64::from(b) + span.div_ceil(t).saturating_sub(1);
                        assert!(got <= bound, "{n}/{window:?} burst {b}: {got} in {span} ns");
                    }
                });
            }
        }
    }

    /// `retry_in` is exact: the request fits then, and not a nanosecond
    /// earlier. Checked on the arithmetic directly, from random states.
    #[test]
    fn retry_in_is_exactly_when_it_fits() {
        for (i, (n, window)) in LIMITS.into_iter().enumerate() {
            let mut rng = Rng(77 + i as u64);
            for burst in [None, Some(1 + rng.below(u64::from(n)) as u32)] {
                let l = limit(n, window, burst);
                let (mut cell, mut now) = (Cell::default(), rng.below(l.window));
                for _ in 0..5000 {
                    now += gap(&mut rng, &l);
                    let w = weight(&mut rng, &l);
                    match l.check(cell, now, w) {
                        (Outcome::Allowed { .. }, Some(next)) => cell = next,
                        (Outcome::Denied { retry_in }, None) => {
                            assert!(!retry_in.is_zero());
                            let at = now + retry_in.as_nanos() as u64;
                            assert!(l.check(cell, at, w).0.is_allowed(), "{n}/{window:?}");
                            assert!(!l.check(cell, at - 1, w).0.is_allowed(), "{n}/{window:?}");
                        }
                        (Outcome::Never, None) => assert!(w > l.burst),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }
}
