// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The counters carried over a restart of the memory backend: what is
//! saved, its bytes, and how it is put back, so that a restart does not
//! hand every sender a fresh quota. Reading and writing the file is the
//! daemon's (`crate::store::state_file`); nothing here touches a file.
//!
//! # What is saved
//!
//! The wall-clock time of the save, the identity hash's key, the bucket
//! keys of the identities in the lock list, and per limiter (named by a
//! descriptor of everything that defines it: rule name, what it counts,
//! per what, rate, burst, override target) its buckets that are not idle.
//! A rule whose definition changed has another descriptor and starts
//! empty, as on a reload. A bucket's times are saved relative to the
//! save: at restore, `age` (wall time between save and restore) later,
//! they are placed that far back on the new process's monotonic clock.
//!
//! # The bytes (version 1, integers little-endian)
//!
//! ```text
//! magic      "egress-milter:counters\n" (23 bytes)
//! version    u32 = 1
//! saved_at   u64 seconds + u32 nanoseconds since the Unix epoch
//! hash key   16 bytes
//! locked     u32 count, then that many u64 bucket keys
//! limiters   u32 count, then for each:
//!              u32 length + UTF-8 descriptor
//!              u64 count, then that many buckets of 40 bytes:
//!                u64 key, i64 tat, i64 prev_tat, i64 end, u32 prev, u32 cur
//!                (times in nanoseconds relative to saved_at)
//! checksum   16 bytes: SipHash-1-3-128 with key 0 of everything before
//! ```
//!
//! The checksum finds a damaged or partly written file (the daemon writes
//! it atomically, so that takes a disk fault or a hand edit); it is no
//! seal against someone who can write the file, who could as well edit
//! the lock list.

use super::{Counters, LimiterId, lock};
use crate::config::format_duration;
use crate::policy::limiter::{BucketKey, SavedCell};
use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8] = b"egress-milter:counters\n";
const VERSION: u32 = 1;
const CELL_BYTES: usize = 40;
const CHECKSUM_BYTES: usize = 16;

/// A state saved up to this much "in the future" is taken as saved just
/// now: a wall clock stepped back by NTP across a quick restart is not a
/// reason to hand out fresh quotas.
pub const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(2);

/// The secret key of the identity hash (see [`Counters`]). Its `Debug`
/// does not show it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey([u8; 16]);

impl HashKey {
    /// A key from the operating system's random source.
    pub fn random() -> Self {
        let mut key = [0; 16];
        if getrandom::fill(&mut key).is_err() {
            // Not seen on Linux; std seeds `RandomState` from the OS too,
            // by other means, so two of its keyed hashes are as secret.
            let seed = std::hash::RandomState::new();
            key[..8].copy_from_slice(&seed.hash_one(1u8).to_le_bytes());
            key[8..].copy_from_slice(&seed.hash_one(2u8).to_le_bytes());
        }
        Self(key)
    }

    pub(super) fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.0)
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Counters as saved at a clean stop; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCounters {
    saved_at: SystemTime,
    hash_key: HashKey,
    /// Bucket keys of the identities in the lock list at the save: one
    /// unlocked while the daemon was stopped gets a fresh start, as an
    /// unlock at run time gives it.
    locked: Vec<BucketKey>,
    limiters: Vec<SavedLimiter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SavedLimiter {
    descriptor: String,
    cells: Vec<(BucketKey, SavedCell)>,
}

/// Why a saved state is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// It does not start as a state file does.
    NotAState,
    /// Written by a version that writes another format.
    Version(u32),
    /// The checksum does not match: damaged, or cut short.
    Checksum,
    /// The checksum matches but the contents make no sense.
    Corrupt(&'static str),
    /// Older than `store.state_max_age`.
    TooOld { age: Duration, max: Duration },
    /// Saved after now: the wall clock went backwards.
    InTheFuture { by: Duration },
    /// Saved with another hash key than the counters it is imported into.
    OtherKey,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NotAState => f.write_str("not a counters state file"),
            StateError::Version(v) => write!(f, "format version {v}, this version reads {VERSION}"),
            StateError::Checksum => f.write_str("checksum mismatch: the file is damaged or was cut short"),
            StateError::Corrupt(what) => write!(f, "corrupt: {what}"),
            StateError::TooOld { age, max } => write!(
                f,
                "saved {} ago, longer than store.state_max_age ({})",
                format_duration(*age),
                format_duration(*max)
            ),
            StateError::InTheFuture { by } => write!(
                f,
                "saved {} in the future: the wall clock went backwards",
                format_duration(*by)
            ),
            StateError::OtherKey => f.write_str("saved with another hash key"),
        }
    }
}

impl std::error::Error for StateError {}

/// What [`Counters::import`] put back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Buckets restored (not idle by now), over all limiters.
    pub buckets: usize,
    /// Limiters (rules, override rates, the hold limit) found unchanged.
    pub limiters: usize,
    /// Saved limiters whose rule is gone or defined differently now: their
    /// counts were dropped.
    pub dropped: usize,
    /// Identities unlocked while the daemon was stopped: forgotten.
    pub unlocked: usize,
}

impl SavedCounters {
    /// When it was saved (wall clock).
    pub fn saved_at(&self) -> SystemTime {
        self.saved_at
    }

    /// The key the saved buckets were hashed with.
    pub fn hash_key(&self) -> HashKey {
        self.hash_key
    }

    /// Number of buckets saved, over all limiters.
    pub fn buckets(&self) -> usize {
        self.limiters.iter().map(|l| l.cells.len()).sum()
    }

    /// How long ago, at `now`, it was saved, if that is at most `max`.
    pub fn age(&self, now: SystemTime, max: Duration) -> Result<Duration, StateError> {
        let age = match now.duration_since(self.saved_at) {
            Ok(age) => age,
            Err(e) if e.duration() <= CLOCK_STEP_TOLERANCE => Duration::ZERO,
            Err(e) => return Err(StateError::InTheFuture { by: e.duration() }),
        };
        if age > max {
            return Err(StateError::TooOld { age, max });
        }
        Ok(age)
    }

    /// The bytes of the state file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.buckets() * CELL_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let since = self.saved_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        out.extend_from_slice(&since.as_secs().to_le_bytes());
        out.extend_from_slice(&since.subsec_nanos().to_le_bytes());
        out.extend_from_slice(&self.hash_key.0);
        out.extend_from_slice(&len32(self.locked.len()).to_le_bytes());
        for key in &self.locked {
            out.extend_from_slice(&key.to_le_bytes());
        }
        out.extend_from_slice(&len32(self.limiters.len()).to_le_bytes());
        for limiter in &self.limiters {
            out.extend_from_slice(&len32(limiter.descriptor.len()).to_le_bytes());
            out.extend_from_slice(limiter.descriptor.as_bytes());
            out.extend_from_slice(&(limiter.cells.len() as u64).to_le_bytes());
            for (key, c) in &limiter.cells {
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&c.tat.to_le_bytes());
                out.extend_from_slice(&c.prev_tat.to_le_bytes());
                out.extend_from_slice(&c.end.to_le_bytes());
                out.extend_from_slice(&c.prev.to_le_bytes());
                out.extend_from_slice(&c.cur.to_le_bytes());
            }
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Reads the bytes of a state file. Every count is checked against
    /// the bytes that are left before anything is allocated for it.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err(StateError::NotAState);
        };
        let version = rest
            .get(..4)
            .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            .ok_or(StateError::Checksum)?;
        if version != VERSION {
            return Err(StateError::Version(version));
        }
        let split = bytes.len().checked_sub(CHECKSUM_BYTES).ok_or(StateError::Checksum)?;
        let (body, sum) = bytes.split_at(split);
        if body.len() < MAGIC.len() + 4 || checksum(body) != sum {
            return Err(StateError::Checksum);
        }
        let mut r = Reader {
            rest: &body[MAGIC.len() + 4..],
        };
        let secs = r.u64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(StateError::Corrupt("time of the save"));
        }
        let saved_at = UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos))
            .ok_or(StateError::Corrupt("time of the save"))?;
        let mut hash_key = [0; 16];
        hash_key.copy_from_slice(r.take(16)?);
        let n = r.u32()?;
        let n = r.count(n.into(), 8)?;
        let locked = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
        let n = r.u32()?;
        let n = r.count(n.into(), 4 + 8)?;
        let mut limiters = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u32()?;
            let descriptor = std::str::from_utf8(r.take(len as usize)?)
                .map_err(|_| StateError::Corrupt("limiter descriptor"))?
                .to_string();
            let cells = r.u64()?;
            let cells = r.count(cells, CELL_BYTES)?;
            let cells = (0..cells)
                .map(|_| {
                    let key = r.u64()?;
                    let cell = SavedCell {
                        tat: r.i64()?,
                        prev_tat: r.i64()?,
                        end: r.i64()?,
                        prev: r.u32()?,
                        cur: r.u32()?,
                    };
                    Ok((key, cell))
                })
                .collect::<Result<_, StateError>>()?;
            limiters.push(SavedLimiter { descriptor, cells });
        }
        if !r.rest.is_empty() {
            return Err(StateError::Corrupt("bytes after the last limiter"));
        }
        Ok(SavedCounters {
            saved_at,
            hash_key: HashKey(hash_key),
            locked,
            limiters,
        })
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut h = SipHasher13x128::new_with_key(&[0; 16]);
    h.write(bytes);
    u128::from(h.finish128()).to_le_bytes()
}

/// The bytes not read yet.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if n > self.rest.len() {
            return Err(StateError::Corrupt("a count runs past the end"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// `n` items of at least `size` bytes each, if that many bytes are left.
    fn count(&self, n: u64, size: usize) -> Result<usize, StateError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(size).is_some_and(|b| b <= self.rest.len()))
            .ok_or(StateError::Corrupt("a count runs past the end"))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, StateError> {
        self.array().map(i64::from_le_bytes)
    }
}

/// Everything that defines a limiter, in a form that stays the same
/// across versions: strings with their length, the window to the
/// nanosecond. Two limiters have the same descriptor exactly when their
/// [`LimiterId`]s are equal.
fn descriptor(id: &LimiterId) -> String {
    let LimiterId {
        rule,
        count,
        per,
        rate,
        burst,
        variant,
        divisor,
    } = id;
    let text = |s: &str| format!("{}:{s}", s.len());
    let mut d = format!(
        "rule={} count={count} per={per} rate={}/{}.{:09}s burst={} variant={}",
        text(rule),
        rate.count,
        rate.window.as_secs(),
        rate.window.subsec_nanos(),
        burst.map_or(0, NonZeroU32::get),
        variant.as_deref().map_or_else(|| "none".to_string(), text),
    );
    // Only the fallback of shared counters is divided (and never saved):
    // memory-backend descriptors stay as they were.
    if *divisor != 1 {
        d.push_str(&format!(" divisor={divisor}"));
    }
    d
}

impl Counters {
    /// The buckets that are not idle, to restore after a restart.
    /// `locked` names the identities in the lock list now.
    pub fn export<S: AsRef<str>>(&self, locked: impl IntoIterator<Item = S>) -> SavedCounters {
        let registry = lock(&self.registry);
        let limiters = registry
            .iter()
            .map(|(id, limiter)| SavedLimiter {
                descriptor: descriptor(id),
                cells: limiter.save(),
            })
            .filter(|l| !l.cells.is_empty())
            .collect();
        SavedCounters {
            saved_at: self.clock.wall_now(),
            hash_key: self.hash_key,
            locked: locked.into_iter().map(|id| self.key(id.as_ref())).collect(),
            limiters,
        }
    }

    /// Puts back what [`Counters::export`] saved `age` ago (see
    /// [`SavedCounters::age`]) into the limiters of the policy built on
    /// these counters (so build it first): each limiter whose definition
    /// is unchanged gets its buckets back, moved by `age`. An identity that
    /// was in the lock list at the save and is not in `locked` now was
    /// unlocked meanwhile, and starts afresh. The counters must use the
    /// saved hash key ([`Counters::with_key`]).
    pub fn import<S: AsRef<str>>(
        &self,
        saved: SavedCounters,
        age: Duration,
        locked: impl IntoIterator<Item = S>,
    ) -> Result<Restored, StateError> {
        if saved.hash_key != self.hash_key {
            return Err(StateError::OtherKey);
        }
        let mut by_descriptor: HashMap<String, Vec<(BucketKey, SavedCell)>> =
            saved.limiters.into_iter().map(|l| (l.descriptor, l.cells)).collect();
        let registry = lock(&self.registry);
        let mut restored = Restored::default();
        for (id, limiter) in registry.iter() {
            if let Some(cells) = by_descriptor.remove(&descriptor(id)) {
                restored.buckets += limiter.restore(&cells, age);
                restored.limiters += 1;
            }
        }
        restored.dropped = by_descriptor.len();
        let locked_now: HashSet<BucketKey> = locked.into_iter().map(|id| self.key(id.as_ref())).collect();
        for key in saved.locked.iter().filter(|k| !locked_now.contains(k)) {
            for limiter in registry.values() {
                limiter.forget(*key);
            }
            restored.unlocked += 1;
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::locks::FileLocks;
    use crate::policy::Policy;
    use crate::policy::identity::Identity;
    use crate::test_util::block_on;
    use std::path::Path;
    use std::sync::Arc;

    const RULES: &str = r#"
[[rule]]
name = "per-minute"
rate = "3/1m"
action = "tempfail"

[[rule]]
name = "per-hour"
rate = "20/1h"
action = "tempfail"

[[override]]
identity = "big@x.org"
rates = { per-minute = "5/1m" }
"#;

    struct Daemon {
        policy: Policy,
        counters: Arc<Counters>,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    /// A policy on `counters` (or fresh ones) with `rules`.
    fn start(rules: &str, counters: Option<Arc<Counters>>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let lockfile = dir.path().join("locks.toml");
        let text = format!("{rules}\n[locks]\nfile = \"{}\"\n", lockfile.display());
        let config = Arc::new(Config::parse(&text, Path::new("t.toml")).unwrap());
        let counters = counters.unwrap_or_else(|| Counters::new(Clock::manual()));
        let locks = FileLocks::open(&lockfile, Arc::new(|s: &str| Ok(s.to_lowercase()))).unwrap();
        Daemon {
            policy: Policy::new(config, counters.clone(), locks),
            clock: counters.clock().clone(),
            counters,
            _dir: dir,
        }
    }

    fn id(v: &str) -> Identity {
        Identity {
            value: v.into(),
            source: crate::config::IdentitySource::Auth,
        }
    }

    /// What the next message of `who` would trip: (rule, retry in).
    fn trips(d: &Daemon, who: &str) -> Vec<(String, Option<Duration>)> {
        let plan = d.policy.plan(id(who), false);
        d.policy
            .peek(&plan, 1, 1)
            .into_iter()
            .map(|t| (t.rule, t.retry_in))
            .collect()
    }

    fn send(d: &Daemon, who: &str, n: usize) {
        let plan = d.policy.plan(id(who), false);
        for _ in 0..n {
            assert!(d.policy.commit(&plan, 1).is_empty(), "{who}");
        }
    }

    /// A daemon that sent, saved and stopped; another that starts `after`
    /// later (wall time) with `rules` and restores what the first one saved.
    fn restart(rules: &str, after: Duration, sent: &[(&str, usize)]) -> (Daemon, Restored) {
        let before = start(RULES, None);
        before.clock.advance(Duration::from_secs(1000));
        for &(who, n) in sent {
            send(&before, who, n);
        }
        before.clock.advance(Duration::from_secs(10));
        let bytes = before.counters.export(Vec::<String>::new()).encode();
        let saved = SavedCounters::decode(&bytes).unwrap();
        assert_eq!(saved.saved_at(), before.clock.wall_now());
        // The next process's clocks: monotonic from zero, wall time on.
        let after_clock = Clock::manual_at(saved.saved_at());
        after_clock.advance(after);
        let age = saved.age(after_clock.wall_now(), Duration::from_secs(86_400)).unwrap();
        assert_eq!(age, after);
        let counters = Counters::with_key(after_clock, saved.hash_key());
        let d = start(rules, Some(counters));
        let restored = d.counters.import(saved, age, Vec::<String>::new()).unwrap();
        (d, restored)
    }

    #[test]
    fn a_bucket_full_before_the_restart_refuses_until_its_window_is_over() {
        let (d, restored) = restart(RULES, Duration::from_secs(20), &[("a@x.org", 3), ("b@x.org", 1)]);
        assert_eq!(
            restored,
            Restored {
                buckets: 4,
                limiters: 2,
                dropped: 0,
                unlocked: 0
            }
        );
        // Filled 30 s before this start (10 s before the save, which was 20 s ago).
        let minute = "per-minute".to_string();
        assert_eq!(trips(&d, "a@x.org"), [(minute.clone(), Some(Duration::from_secs(30)))]);
        assert!(trips(&d, "b@x.org").is_empty());
        send(&d, "b@x.org", 2);
        assert_eq!(trips(&d, "b@x.org"), [(minute, Some(Duration::from_secs(30)))]);
        d.clock.advance(Duration::from_secs(30) - Duration::from_nanos(1));
        assert_eq!(trips(&d, "a@x.org").len(), 1);
        d.clock.advance(Duration::from_nanos(1));
        assert!(trips(&d, "a@x.org").is_empty());
        // The hourly rule still holds all of it.
        let state = block_on(d.policy.explain(id("a@x.org")));
        assert_eq!(state[1].usage.unwrap().used, 3);
    }

    #[test]
    fn a_changed_rule_starts_empty_and_unchanged_ones_keep_their_counts() {
        let changed = RULES.replace("3/1m", "4/1m");
        let (d, restored) = restart(&changed, Duration::from_secs(5), &[("a@x.org", 3), ("big@x.org", 5)]);
        // per-minute is new; per-hour and big's override rate are as before.
        assert_eq!((restored.limiters, restored.dropped), (2, 1));
        let state = block_on(d.policy.explain(id("a@x.org")));
        assert_eq!(state[0].usage.unwrap().used, 0, "changed rule starts afresh");
        assert_eq!(state[1].usage.unwrap().used, 3);
        assert_eq!(
            trips(&d, "big@x.org"),
            [("per-minute".to_string(), Some(Duration::from_secs(45)))]
        );
        // A removed rule's counts are dropped, and go nowhere else.
        let (d, restored) = restart(
            "[[rule]]\nname = \"other\"\nrate = \"20/1h\"\naction = \"tempfail\"\n",
            Duration::ZERO,
            &[("a@x.org", 3)],
        );
        assert_eq!((restored.buckets, restored.dropped), (0, 2));
        assert_eq!(block_on(d.policy.explain(id("a@x.org")))[0].usage.unwrap().used, 0);
    }

    #[test]
    fn what_went_idle_while_stopped_is_not_restored() {
        let (d, restored) = restart(RULES, Duration::from_secs(3600), &[("a@x.org", 3)]);
        assert_eq!(restored.buckets, 0);
        assert!(trips(&d, "a@x.org").is_empty());
        let (_, restored) = restart(RULES, Duration::from_secs(120), &[("a@x.org", 3)]);
        assert_eq!(restored.buckets, 1, "the hour's bucket only");
    }

    #[test]
    fn an_identity_unlocked_while_stopped_starts_afresh() {
        let d = start(RULES, None);
        send(&d, "a@x.org", 3);
        send(&d, "b@x.org", 3);
        let saved = d.counters.export(["a@x.org", "b@x.org"]);
        let after = start(RULES, Some(Counters::with_key(Clock::manual(), saved.hash_key())));
        let restored = after.counters.import(saved, Duration::ZERO, ["b@x.org"]).unwrap();
        assert_eq!(restored.unlocked, 1);
        assert!(trips(&after, "a@x.org").is_empty(), "unlocked: forgotten");
        assert_eq!(trips(&after, "b@x.org").len(), 1, "still locked: counts kept");
    }

    #[test]
    fn restored_counters_need_the_saved_hash_key() {
        let d = start(RULES, None);
        send(&d, "a@x.org", 3);
        let saved = d.counters.export(Vec::<String>::new());
        let other = start(RULES, None);
        assert_eq!(
            other
                .counters
                .import(saved.clone(), Duration::ZERO, Vec::<String>::new()),
            Err(StateError::OtherKey)
        );
        // The same key hashes the same identity to the same bucket, in any process.
        let again = Counters::with_key(Clock::manual(), saved.hash_key());
        assert_eq!(again.key("a@x.org"), d.counters.key("a@x.org"));
        assert_ne!(other.counters.key("a@x.org"), d.counters.key("a@x.org"));
        assert_eq!(format!("{:?}", saved.hash_key()), "HashKey(..)");
    }

    #[test]
    fn a_state_too_old_or_from_the_future_is_refused() {
        let d = start(RULES, None);
        let saved = d.counters.export(Vec::<String>::new());
        let at = saved.saved_at();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            saved.age(at + Duration::from_secs(90), day),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(saved.age(at + day, day), Ok(day));
        let e = saved.age(at + day + Duration::from_secs(1), day).unwrap_err();
        assert_eq!(e.to_string(), "saved 1d1s ago, longer than store.state_max_age (1d)");
        assert_eq!(saved.age(at - Duration::from_secs(1), day), Ok(Duration::ZERO));
        let e = saved.age(at - Duration::from_secs(3600), day).unwrap_err();
        assert_eq!(
            e,
            StateError::InTheFuture {
                by: Duration::from_secs(3600)
            }
        );
        assert!(e.to_string().contains("the wall clock went backwards"), "{e}");
    }

    /// The bytes with a checksum that matches them.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        body
    }

    #[test]
    fn damaged_files_are_refused_without_panic_or_huge_allocations() {
        let d = start(RULES, None);
        send(&d, "a@x.org", 2);
        let good = d.counters.export(["x@x.org"]).encode();
        assert_eq!(SavedCounters::decode(&good).unwrap().buckets(), 2);
        assert_eq!(SavedCounters::decode(b""), Err(StateError::NotAState));
        assert_eq!(SavedCounters::decode(b"[locks]\n"), Err(StateError::NotAState));
        assert_eq!(SavedCounters::decode(MAGIC), Err(StateError::Checksum));
        let mut v2 = good.clone();
        v2[MAGIC.len()] = 2;
        assert_eq!(SavedCounters::decode(&v2), Err(StateError::Version(2)));
        for cut in [MAGIC.len() + 4, good.len() / 2, good.len() - 1] {
            assert_eq!(SavedCounters::decode(&good[..cut]), Err(StateError::Checksum), "{cut}");
        }
        for i in MAGIC.len() + 4..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert_eq!(SavedCounters::decode(&bad), Err(StateError::Checksum), "byte {i}");
        }
        // Sealed, but with counts that run past the end.
        let body = &good[..good.len() - CHECKSUM_BYTES];
        let locked_at = MAGIC.len() + 4 + 12 + 16;
        let mut huge = body.to_vec();
        huge[locked_at..locked_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            SavedCounters::decode(&sealed(huge)),
            Err(StateError::Corrupt(_))
        ));
        // The last limiter holds one bucket, after its count.
        let cells_at = body.len() - CELL_BYTES - 8;
        let mut huge = body.to_vec();
        huge[cells_at..cells_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            SavedCounters::decode(&sealed(huge)),
            Err(StateError::Corrupt(_))
        ));
        let mut extra = body.to_vec();
        extra.push(0);
        assert!(matches!(
            SavedCounters::decode(&sealed(extra)),
            Err(StateError::Corrupt(_))
        ));
        let mut nanos = body.to_vec();
        nanos[MAGIC.len() + 12..MAGIC.len() + 16].copy_from_slice(&2_000_000_000u32.to_le_bytes());
        assert!(matches!(
            SavedCounters::decode(&sealed(nanos)),
            Err(StateError::Corrupt(_))
        ));
    }

    #[test]
    fn descriptors_tell_every_part_of_a_limiter_apart() {
        let base = LimiterId {
            rule: "r".into(),
            count: crate::config::Counted::Messages,
            per: crate::config::Scope::Identity,
            rate: "30/1m".parse().unwrap(),
            burst: None,
            variant: None,
            divisor: 1,
        };
        assert_eq!(
            descriptor(&base),
            "rule=1:r count=messages per=identity rate=30/60.000000000s burst=0 variant=none"
        );
        let variants = [
            LimiterId {
                rule: "r ".into(),
                ..base.clone()
            },
            LimiterId {
                count: crate::config::Counted::Recipients,
                ..base.clone()
            },
            LimiterId {
                per: crate::config::Scope::Domain,
                ..base.clone()
            },
            LimiterId {
                rate: "30/61s".parse().unwrap(),
                ..base.clone()
            },
            LimiterId {
                burst: NonZeroU32::new(5),
                ..base.clone()
            },
            LimiterId {
                variant: Some("none".into()),
                ..base.clone()
            },
        ];
        let mut seen: HashSet<String> = variants.iter().map(descriptor).collect();
        seen.insert(descriptor(&base));
        assert_eq!(seen.len(), variants.len() + 1);
    }
}
