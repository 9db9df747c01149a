// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! What each identity did recently, for `top`, `explain`, `report` and
//! `queue hold`: messages and recipients accepted, refusals and holds over
//! the last minute, the last hour and each of the last 48 hours, and the
//! queue ids of its last accepted messages.
//!
//! The registry is written on every verdict, so recording is O(1): a dashmap
//! lookup (sharded, no global lock), then a mutex of that identity's own
//! entry. A known identity costs no allocation. Memory is bounded by a hard
//! cap on entries ([`ActivityRegistry::set_cap`]); at the cap a new identity
//! is counted in one shared row, [`OTHER`], and idle entries are evicted by
//! the daemon's housekeeping ([`ActivityRegistry::evict_idle`]).

use crate::clock::Clock;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The row that counts identities first seen while the registry was full.
pub const OTHER: &str = "(other)";

/// Hours of per-hour totals kept (the longest `report --since`).
pub const HISTORY_HOURS: usize = 48;

/// Queue ids kept per identity as evidence.
pub const QUEUE_IDS: usize = 8;

/// Longest queue id kept (Postfix long queue ids are up to 17 characters).
const QUEUE_ID_MAX: usize = 23;

/// One ring of time buckets: `N` buckets of `WIDTH` seconds.
#[derive(Clone, Copy)]
struct Ring<const N: usize, const WIDTH: u64> {
    buckets: [Counts; N],
}

impl<const N: usize, const WIDTH: u64> Ring<N, WIDTH> {
    const EMPTY: Self = Self {
        buckets: [Counts::ZERO; N],
    };

    /// Clears the buckets between the last write (`last` seconds) and `now`.
    fn advance(&mut self, last: u64, now: u64) {
        let (from, to) = (last / WIDTH, now / WIDTH);
        if to <= from {
            return;
        }
        let stale = usize::try_from(to - from).unwrap_or(N).min(N);
        for i in 1..=stale as u64 {
            self.buckets[((from + i) % N as u64) as usize] = Counts::ZERO;
        }
    }

    fn current(&mut self, now: u64) -> &mut Counts {
        &mut self.buckets[((now / WIDTH) % N as u64) as usize]
    }

    /// The sum of the `n` most recent buckets at `now`, given the last write
    /// at `last` (buckets after `last` hold older data and are skipped).
    fn sum(&self, last: u64, now: u64, n: usize) -> Counts {
        let (written, current) = (last / WIDTH, now / WIDTH);
        let n = n.min(N) as u64;
        let oldest = (current + 1).saturating_sub(n);
        let mut total = Counts::ZERO;
        let mut i = oldest;
        while i <= written.min(current) {
            total.add(&self.buckets[(i % N as u64) as usize]);
            i += 1;
        }
        total
    }
}

/// What one identity did in a span of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages accepted.
    pub messages: u32,
    /// Recipients of accepted messages.
    pub recipients: u32,
    /// Temporary refusals (4xx), at MAIL, RCPT or end of message.
    pub tempfailed: u32,
    /// Permanent refusals (5xx), including a locked identity's.
    pub rejected: u32,
    /// Messages put on hold (locked identity, `locked_action = "hold"`).
    pub held: u32,
    /// Recipients of its mail that the MTA's bounces reported as failed.
    #[serde(default)]
    pub bounced: u32,
}

impl Counts {
    const ZERO: Self = Self {
        messages: 0,
        recipients: 0,
        tempfailed: 0,
        rejected: 0,
        held: 0,
        bounced: 0,
    };

    fn add(&mut self, o: &Counts) {
        self.messages = self.messages.saturating_add(o.messages);
        self.recipients = self.recipients.saturating_add(o.recipients);
        self.tempfailed = self.tempfailed.saturating_add(o.tempfailed);
        self.rejected = self.rejected.saturating_add(o.rejected);
        self.held = self.held.saturating_add(o.held);
        self.bounced = self.bounced.saturating_add(o.bounced);
    }

    /// Messages tried: accepted, refused or held.
    pub fn attempts(&self) -> u32 {
        self.messages
            .saturating_add(self.tempfailed)
            .saturating_add(self.rejected)
            .saturating_add(self.held)
    }

    fn is_empty(&self) -> bool {
        *self == Self::ZERO
    }
}

/// A verdict, as the registry counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message accepted with this many recipients.
    Accepted {
        recipients: u32,
    },
    Tempfailed,
    Rejected,
    /// A message put on hold with this many recipients.
    Held {
        recipients: u32,
    },
    /// A bounce of its mail reported this many recipients as failed.
    Bounced {
        failed: u32,
    },
}

#[derive(Clone, Copy)]
struct QueueId {
    len: u8,
    bytes: [u8; QUEUE_ID_MAX],
}

struct Rings {
    /// Seconds (on the registry's clock) of the last write.
    last: u64,
    minute: Ring<6, 10>,
    hour: Ring<12, 300>,
    hours: Ring<HISTORY_HOURS, 3600>,
    queue_ids: [QueueId; QUEUE_IDS],
    /// Number of queue ids recorded (the next slot is this modulo QUEUE_IDS).
    recorded_ids: u32,
}

/// Boxed, so the map's spare slots cost a pointer, not a whole entry.
struct Entry(Box<Mutex<Rings>>);

impl Entry {
    fn new(now: u64) -> Self {
        Entry(Box::new(Mutex::new(Rings {
            last: now,
            minute: Ring::EMPTY,
            hour: Ring::EMPTY,
            hours: Ring::EMPTY,
            queue_ids: [QueueId {
                len: 0,
                bytes: [0; QUEUE_ID_MAX],
            }; QUEUE_IDS],
            recorded_ids: 0,
        })))
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, now: u64, event: Event, queue_id: &str) {
        let mut r = self.rings();
        let last = r.last;
        if now > last {
            r.minute.advance(last, now);
            r.hour.advance(last, now);
            r.hours.advance(last, now);
            r.last = now;
        }
        let now = r.last;
        let apply = |c: &mut Counts| match event {
            Event::Accepted { recipients } => {
                c.messages = c.messages.saturating_add(1);
                c.recipients = c.recipients.saturating_add(recipients);
            }
            Event::Tempfailed => c.tempfailed = c.tempfailed.saturating_add(1),
            Event::Rejected => c.rejected = c.rejected.saturating_add(1),
            Event::Held { .. } => c.held = c.held.saturating_add(1),
            Event::Bounced { failed } => c.bounced = c.bounced.saturating_add(failed),
        };
        apply(r.minute.current(now));
        apply(r.hour.current(now));
        apply(r.hours.current(now));
        let evidence = matches!(event, Event::Accepted { .. } | Event::Held { .. });
        if evidence && !queue_id.is_empty() && queue_id != "NONE" && queue_id.len() <= QUEUE_ID_MAX {
            let slot = (r.recorded_ids as usize) % QUEUE_IDS;
            let mut bytes = [0; QUEUE_ID_MAX];
            bytes[..queue_id.len()].copy_from_slice(queue_id.as_bytes());
            r.queue_ids[slot] = QueueId {
                len: queue_id.len() as u8,
                bytes,
            };
            r.recorded_ids = r.recorded_ids.wrapping_add(1);
        }
    }

    fn snapshot(&self, identity: &str, now: u64) -> Activity {
        let r = self.rings();
        let n = (r.recorded_ids as usize).min(QUEUE_IDS);
        // Newest first.
        let queue_ids = (0..n)
            .map(|k| {
                let slot = (r.recorded_ids as usize + QUEUE_IDS - 1 - k) % QUEUE_IDS;
                let q = &r.queue_ids[slot];
                String::from_utf8_lossy(&q.bytes[..q.len as usize]).into_owned()
            })
            .collect();
        Activity {
            identity: identity.to_string(),
            domain: domain_of(identity).map(str::to_string),
            last_minute: r.minute.sum(r.last, now, 6),
            last_hour: r.hour.sum(r.last, now, 12),
            idle_secs: now.saturating_sub(r.last),
            queue_ids,
            locked: false,
        }
    }

    /// The sort key of `top`, or `None` if nothing happened in the last hour.
    fn rank(&self, now: u64, sort: SortBy) -> Option<(u32, u32)> {
        let r = self.rings();
        if now.saturating_sub(r.last) >= 3600 {
            return None;
        }
        let (minute, hour) = (r.minute.sum(r.last, now, 6), r.hour.sum(r.last, now, 12));
        if hour.is_empty() {
            return None;
        }
        Some(match sort {
            SortBy::Messages => (minute.attempts(), hour.attempts()),
            SortBy::Recipients => (minute.recipients, hour.recipients),
        })
    }

    fn history(&self, now: u64, hours: usize) -> Counts {
        let r = self.rings();
        r.hours.sum(r.last, now, hours)
    }

    fn idle_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.rings().last)
    }
}

/// The domain of an address identity.
pub fn domain_of(identity: &str) -> Option<&str> {
    identity.rsplit_once('@').map(|(_, d)| d).filter(|d| !d.is_empty())
}

/// One identity's recent activity, as the status API serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub identity: String,
    pub domain: Option<String>,
    /// The last 60 seconds (in 10-second steps: between 50 and 60 seconds).
    pub last_minute: Counts,
    /// The last hour (in 5-minute steps: between 55 and 60 minutes).
    pub last_hour: Counts,
    /// Seconds since its last recorded verdict.
    pub idle_secs: u64,
    /// Queue ids of its last accepted or held messages, newest first.
    pub queue_ids: Vec<String>,
    /// Whether a lock is in force (filled in from the lock list).
    pub locked: bool,
}

/// One identity's totals over the last hours, for `report`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub identity: String,
    pub domain: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub locked: bool,
}

/// Merges the `top` lists of several hosts (a fleet): one row per identity
/// with the counts summed, the shortest idle time, the newest queue ids,
/// locked if locked anywhere; the `n` busiest by `sort`.
pub fn merge_top(lists: impl IntoIterator<Item = Vec<Activity>>, n: usize, sort: SortBy) -> Vec<Activity> {
    let mut merged: HashMap<String, Activity> = HashMap::new();
    for a in lists.into_iter().flatten() {
        match merged.get_mut(&a.identity) {
            None => {
                merged.insert(a.identity.clone(), a);
            }
            Some(m) => {
                m.last_minute.add(&a.last_minute);
                m.last_hour.add(&a.last_hour);
                m.idle_secs = m.idle_secs.min(a.idle_secs);
                m.locked |= a.locked;
                m.queue_ids.extend(a.queue_ids);
                m.queue_ids.truncate(QUEUE_IDS);
            }
        }
    }
    let key = |a: &Activity| match sort {
        SortBy::Messages => (a.last_minute.attempts(), a.last_hour.attempts()),
        SortBy::Recipients => (a.last_minute.recipients, a.last_hour.recipients),
    };
    let mut rows: Vec<Activity> = merged.into_values().collect();
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.identity.cmp(&b.identity)));
    rows.truncate(n);
    rows
}

/// How `top` orders identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Messages tried (accepted, refused, held) in the last minute, then hour.
    Messages,
    /// Recipients accepted in the last minute, then hour.
    Recipients,
}

/// The per-identity activity registry.
pub struct ActivityRegistry {
    clock: Clock,
    map: DashMap<Box<str>, Entry>,
    /// Entries in `map` (kept here so the cap check is one atomic load).
    len: AtomicUsize,
    cap: AtomicUsize,
    other: Entry,
}

impl ActivityRegistry {
    pub fn new(clock: Clock, cap: usize) -> Self {
        let now = secs(&clock);
        Self {
            clock,
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap.max(1)),
            other: Entry::new(now),
        }
    }

    /// Changes the cap (on reload). Entries over a lowered cap stay until
    /// they are evicted as idle; no new ones are added meanwhile.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Identities with an entry of their own.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        secs(&self.clock)
    }

    /// Records one verdict for `identity`.
    pub fn record(&self, identity: &str, event: Event, queue_id: &str) {
        let now = self.now();
        if let Some(entry) = self.map.get(identity) {
            entry.record(now, event, queue_id);
            return;
        }
        // Reserve a slot first, so concurrent newcomers never overshoot the cap.
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.cap.load(Ordering::Relaxed) {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.other.record(now, event, queue_id);
            return;
        }
        match self.map.entry(identity.into()) {
            MapEntry::Occupied(e) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                e.get().record(now, event, queue_id);
            }
            MapEntry::Vacant(v) => v.insert(Entry::new(now)).record(now, event, queue_id),
        }
    }

    /// One identity's activity (or the overflow row, for [`OTHER`]).
    pub fn get(&self, identity: &str) -> Option<Activity> {
        let now = self.now();
        if identity == OTHER {
            return Some(self.other.snapshot(OTHER, now));
        }
        self.map.get(identity).map(|e| e.snapshot(identity, now))
    }

    /// The `n` identities sending the most now (with the overflow row if it
    /// is among them). Identities with nothing in the last hour are left out.
    pub fn top(&self, n: usize, sort: SortBy) -> Vec<Activity> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let now = self.now();
        if n == 0 {
            return Vec::new();
        }
        // Greater first; among equals, the identity that sorts first.
        type Rank = ((u32, u32), Reverse<Box<str>>);
        let mut best: BinaryHeap<Reverse<Rank>> = BinaryHeap::with_capacity(n + 1);
        let mut consider = |identity: &str, entry: &Entry| {
            let Some(key) = entry.rank(now, sort) else {
                return;
            };
            if best.len() == n
                && let Some(Reverse((min_key, Reverse(min_id)))) = best.peek()
                && (key, Reverse(identity)) <= (*min_key, Reverse(&**min_id))
            {
                return;
            }
            best.push(Reverse((key, Reverse(identity.into()))));
            if best.len() > n {
                best.pop();
            }
        };
        for e in self.map.iter() {
            consider(e.key(), e.value());
        }
        consider(OTHER, &self.other);
        let mut ranked = best.into_vec();
        // Ascending `Reverse<Rank>` is descending rank.
        ranked.sort_unstable();
        ranked
            .into_iter()
            .filter_map(|Reverse((_, Reverse(identity)))| self.get(&identity))
            .collect()
    }

    /// Totals over the last `hours` (at most [`HISTORY_HOURS`]; the current
    /// hour counts as one) for every identity with any activity in them,
    /// sorted by domain, then identity.
    pub fn report(&self, hours: usize) -> Vec<ReportRow> {
        let now = self.now();
        let row = |identity: &str, counts: Counts| ReportRow {
            identity: identity.to_string(),
            domain: domain_of(identity).map(str::to_string),
            counts,
            locked: false,
        };
        let mut rows: Vec<ReportRow> = self
            .map
            .iter()
            .filter_map(|e| {
                let c = e.value().history(now, hours);
                (!c.is_empty()).then(|| row(e.key(), c))
            })
            .collect();
        let other = self.other.history(now, hours);
        if !other.is_empty() {
            rows.push(row(OTHER, other));
        }
        rows.sort_by(|a, b| (&a.domain, &a.identity).cmp(&(&b.domain, &b.identity)));
        rows
    }

    /// Forgets identities idle for longer than the history kept, or, when
    /// the registry is at least 90% full, idle for an hour or more (their
    /// older hourly totals are lost: `report` undercounts them). Returns how
    /// many were removed.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let full = self.len() * 10 >= self.cap() * 9;
        let idle_limit = if full { 3600 } else { HISTORY_HOURS as u64 * 3600 };
        let mut removed = 0;
        self.map.retain(|_, e| {
            let keep = e.idle_for(now) < idle_limit;
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

fn secs(clock: &Clock) -> u64 {
    clock.elapsed_nanos() / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ACCEPT1: Event = Event::Accepted { recipients: 1 };

    #[test]
    fn windows_roll_with_the_clock() {
        let clock = Clock::manual();
        let reg = ActivityRegistry::new(clock.clone(), 100);
        for _ in 0..3 {
            reg.record("a@x.org", Event::Accepted { recipients: 2 }, "Q1");
        }
        reg.record("a@x.org", Event::Tempfailed, "Q2");
        let a = reg.get("a@x.org").unwrap();
        assert_eq!(
            a.last_minute,
            Counts {
                messages: 3,
                recipients: 6,
                tempfailed: 1,
                ..Counts::default()
            }
        );
        assert_eq!(a.last_hour, a.last_minute);
        assert_eq!(a.domain.as_deref(), Some("x.org"));

        // 61 s later the minute is empty, the hour is not.
        clock.advance(Duration::from_secs(61));
        let a = reg.get("a@x.org").unwrap();
        assert_eq!(a.last_minute, Counts::default());
        assert_eq!(a.last_hour.messages, 3);
        assert_eq!(a.idle_secs, 61);
        reg.record("a@x.org", ACCEPT1, "Q3");
        let a = reg.get("a@x.org").unwrap();
        assert_eq!((a.last_minute.messages, a.last_hour.messages), (1, 4));

        // An hour on, only the per-hour history remembers.
        clock.advance(Duration::from_secs(3600));
        let a = reg.get("a@x.org").unwrap();
        assert_eq!(a.last_hour, Counts::default());
        assert_eq!(reg.report(1), []);
        let rows = reg.report(2);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].counts.messages, rows[0].counts.tempfailed), (4, 1));

        // After the history (48 h) it is gone from the report too, and
        // housekeeping forgets it.
        clock.advance(Duration::from_secs(48 * 3600));
        assert_eq!(reg.report(48), []);
        assert_eq!(reg.evict_idle(), 1);
        assert!(reg.get("a@x.org").is_none());
        assert_eq!(reg.len(), 0);
    }

    #[test]
    fn a_ring_skips_buckets_of_an_earlier_lap() {
        let clock = Clock::manual();
        let reg = ActivityRegistry::new(clock.clone(), 100);
        reg.record("a@x", ACCEPT1, "Q");
        // Exactly one lap of the minute ring later, a write must not read
        // the old bucket as new.
        clock.advance(Duration::from_secs(60));
        reg.record("a@x", ACCEPT1, "Q");
        assert_eq!(reg.get("a@x").unwrap().last_minute.messages, 1);
        // Reading 30 s after the last write: still that one message.
        clock.advance(Duration::from_secs(30));
        assert_eq!(reg.get("a@x").unwrap().last_minute.messages, 1);
        assert_eq!(reg.get("a@x").unwrap().last_hour.messages, 2);
    }

    #[test]
    fn keeps_the_last_queue_ids_newest_first() {
        let reg = ActivityRegistry::new(Clock::manual(), 10);
        for i in 0..10 {
            reg.record("a@x", ACCEPT1, &format!("Q{i}"));
        }
        reg.record("a@x", Event::Rejected, "REFUSED");
        reg.record("a@x", ACCEPT1, "NONE");
        let ids = reg.get("a@x").unwrap().queue_ids;
        assert_eq!(ids, ["Q9", "Q8", "Q7", "Q6", "Q5", "Q4", "Q3", "Q2"]);
    }

    #[test]
    fn at_the_cap_newcomers_share_the_other_row() {
        let reg = ActivityRegistry::new(Clock::manual(), 3);
        for who in ["a@x", "b@x", "c@x"] {
            reg.record(who, ACCEPT1, "Q");
        }
        for i in 0..5 {
            reg.record(&format!("new{i}@y"), ACCEPT1, "Q");
        }
        reg.record("a@x", ACCEPT1, "Q");
        assert_eq!(reg.len(), 3);
        assert!(reg.get("new0@y").is_none());
        assert_eq!(reg.get(OTHER).unwrap().last_minute.messages, 5);
        assert_eq!(reg.get("a@x").unwrap().last_minute.messages, 2);
        let top = reg.top(2, SortBy::Messages);
        assert_eq!(
            top.iter().map(|a| a.identity.as_str()).collect::<Vec<_>>(),
            [OTHER, "a@x"]
        );
        let report = reg.report(24);
        assert_eq!(report.len(), 4);
        assert!(report.iter().any(|r| r.identity == OTHER && r.counts.messages == 5));
    }

    #[test]
    fn the_cap_holds_under_concurrent_newcomers() {
        let reg = std::sync::Arc::new(ActivityRegistry::new(Clock::manual(), 100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        reg.record(&format!("t{t}-{i}@x"), ACCEPT1, "Q");
                        reg.record("shared@x", ACCEPT1, "Q");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(reg.len(), 100);
        assert_eq!(reg.map.len(), 100);
        let everyone: u32 = reg.report(1).iter().map(|r| r.counts.messages).sum();
        assert_eq!(everyone, 8000, "every message is counted in some row");
    }

    #[test]
    fn top_orders_by_messages_or_recipients() {
        let reg = ActivityRegistry::new(Clock::manual(), 100);
        reg.record("many@x", ACCEPT1, "Q");
        reg.record("many@x", ACCEPT1, "Q");
        reg.record("many@x", Event::Tempfailed, "Q");
        reg.record("wide@x", Event::Accepted { recipients: 50 }, "Q");
        let by = |s| reg.top(10, s).into_iter().map(|a| a.identity).collect::<Vec<_>>();
        assert_eq!(by(SortBy::Messages), ["many@x", "wide@x"]);
        assert_eq!(by(SortBy::Recipients), ["wide@x", "many@x"]);
        assert_eq!(reg.top(1, SortBy::Messages).len(), 1);
        // Equal counts: alphabetical; top(n) keeps the n best of many.
        for who in ["c@y", "b@y", "d@y"] {
            reg.record(who, ACCEPT1, "Q");
        }
        let names: Vec<_> = reg.top(4, SortBy::Messages).into_iter().map(|a| a.identity).collect();
        assert_eq!(names, ["many@x", "b@y", "c@y", "d@y"]);
        assert_eq!(reg.top(0, SortBy::Messages), []);
    }

    #[test]
    fn an_entry_is_about_one_point_eight_kilobytes() {
        // Documented in docs/monitoring.md (status.max_identities).
        let size = std::mem::size_of::<Mutex<Rings>>();
        assert!((1700..=1900).contains(&size), "{size}");
    }

    #[test]
    fn memory_stays_bounded_under_a_million_identities() {
        let clock = Clock::manual();
        let cap = 10_000;
        let reg = ActivityRegistry::new(clock.clone(), cap);
        for i in 0..1_000_000u32 {
            reg.record(&format!("u{i}@flood.example"), ACCEPT1, "Q");
            if i % 100_000 == 99_999 {
                clock.advance(Duration::from_secs(600));
                reg.evict_idle();
            }
            assert!(reg.len() <= cap);
        }
        assert_eq!(reg.len(), reg.map.len());
        let other = reg.get(OTHER).unwrap();
        assert!(other.last_hour.messages > 0);
        // At 90% full, identities idle for an hour make room.
        clock.advance(Duration::from_secs(3600));
        reg.evict_idle();
        assert_eq!(reg.len(), 0);
        reg.record("fresh@x", ACCEPT1, "Q");
        assert!(reg.get("fresh@x").is_some());
    }
}
