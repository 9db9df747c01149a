// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Locks in force: an in-memory view of the lock list, updated at once when
//! the daemon locks an identity and persisted by a background writer that
//! commits concurrent locks together, with a [`Ticket`] for each lock not yet
//! on disk; plus a watcher that picks up edits made by hand or by the CLI.

pub mod edit;
pub mod file;
pub mod pattern;

use crate::config::Config;
use crate::config::address::lock_key;
use dashmap::DashMap;
use file::{
    self as lockfile, Change, Fingerprint, LockEntry, LockFileError, LockList, LockSource, Snapshot, fingerprint,
};
use pattern::Patterns;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

/// What the milter needs of a lock store. It is deliberately narrow so that a
/// shared backend for a fleet of MTAs can stand in for the file.
pub trait LockStore: Send + Sync + 'static {
    /// The lock in force for a normalised identity at `now`, if any.
    fn lookup(&self, identity: &str, now: SystemTime) -> Option<Arc<LockEntry>>;

    /// Locks an identity at once; it is persisted in the background. Returns
    /// `false` if the identity was already locked.
    fn lock(&self, entry: LockEntry, now: SystemTime) -> bool;

    /// Whether the lock of `identity` is still on its way to durable storage:
    /// a ticket that resolves once it is there, or `None` if it is there
    /// already (or there is no lock). A reply that enforces a lock waits for
    /// its ticket, so that no crash forgets a lock that has refused mail.
    fn durability(&self, identity: &str) -> Option<Ticket>;

    /// The lock of a client network (`203.0.113.0/24` in the list) that
    /// covers the client `ip`, if any: it applies whatever the identity.
    fn lookup_client(&self, _ip: IpAddr, _now: SystemTime) -> Option<Arc<LockEntry>> {
        None
    }
}

/// A lock on its way to disk (see [`LockStore::durability`]).
pub struct Ticket(Pin<Box<dyn Future<Output = Durability> + Send + 'static>>);

impl Ticket {
    /// A ticket that resolves with `written`, for a store of another kind.
    pub fn new(written: impl Future<Output = Durability> + Send + 'static) -> Self {
        Self(Box::pin(written))
    }

    /// Resolves once the lock is on disk or its store knows it cannot be
    /// written for now. Not bounded: the caller bounds the wait.
    pub async fn wait(self) -> Durability {
        self.0.await
    }
}

/// What became of a lock a [`Ticket`] waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk: written, fsync'd and renamed into place.
    Written,
    /// The store cannot be written at the moment (the last write failed):
    /// the lock is enforced from memory and the writer retries.
    Failing,
}

/// How far the writer has got, for the tickets.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// Every lock of this batch and of the batches before it is on disk.
    written: u64,
    /// The last write failed; locks not yet written wait for a retry.
    failing: bool,
}

/// A lock set by the daemon and not yet written.
struct Pending {
    entry: Arc<LockEntry>,
    /// The batch that writes it at the latest.
    batch: u64,
}

/// Maps an identity written by an admin to the form the milter compares.
pub type Normaliser = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How identities written in the lock list are compared with resolved ones.
pub fn lock_normaliser(config: &Config) -> Normaliser {
    let identity = config.identity.clone();
    Arc::new(move |s: &str| lock_key(&identity, s))
}

/// Opens the lock list named by the configuration.
pub fn open_locks(config: &Config) -> Result<Arc<FileLocks>, LockFileError> {
    FileLocks::open(&config.locks.file, lock_normaliser(config))
}

/// The lock list file as a [`LockStore`].
pub struct FileLocks {
    path: PathBuf,
    /// How identities in the file are compared: the configuration's
    /// normal form, replaced when a reload changes it (see
    /// [`FileLocks::set_normaliser`]).
    normalise: RwLock<Normaliser>,
    /// The last list read or written successfully.
    active: RwLock<Arc<HashMap<String, Arc<LockEntry>>>>,
    /// The domain (`@example.com`) and network (`203.0.113.0/24`) locks
    /// among them, rebuilt with the list.
    patterns: RwLock<Arc<Patterns>>,
    /// Locks set by the daemon and not yet written to the file. They are
    /// enforced from the moment they are set.
    pending: DashMap<String, Pending>,
    /// The number of the batch the writer takes next. A lock is set under
    /// this mutex and the writer takes a number under it before it collects
    /// the pending locks, so a lock is in the batch it was given or an
    /// earlier one.
    next_batch: Mutex<u64>,
    /// How far the writer has got; tickets wait on it.
    progress: watch::Sender<Progress>,
    /// Wakes the writer.
    wake: Notify,
    /// The "lock written" lines, summed up in a storm.
    write_log: Mutex<WriteLog>,
    /// Identity of the file last loaded (or found unparsable), to notice changes.
    seen: Mutex<Option<Fingerprint>>,
    /// The list as the writer last wrote it: while nobody else touches the
    /// file, the next write starts from it instead of re-reading and parsing
    /// the whole file (which made a lock storm cost O(locks x writes)).
    written: Mutex<Option<Snapshot>>,
    /// Identities unlocked by an edit the writer came across (it re-read a
    /// changed file before the watcher did); the watcher hands them on, so
    /// their counters are forgotten as for any other unlock.
    unlocked_backlog: Mutex<Vec<String>>,
    stats: LockStats,
    /// Moves on whenever the locks in force (or pending) change, so the
    /// fleet's lock sync compares the list only when there is news.
    version: AtomicU64,
}

/// Counts and states for metrics and `/healthz`.
#[derive(Debug, Default)]
pub struct LockStats {
    /// Locks set by the daemon (lock rules).
    pub added_auto: AtomicU64,
    /// Locks that appeared in the file (CLI or editor).
    pub added_manual: AtomicU64,
    /// Failed writes of the lock list.
    pub write_errors: AtomicU64,
    /// The last write failed (locks are pending, enforced in memory).
    pub write_failing: AtomicBool,
    /// The file does not parse; the last good list is in force.
    pub corrupt: AtomicBool,
}

/// How long a changed lock list must stay unmodified before the watcher
/// reads it. Editors such as nano write in place (truncate, then write); a
/// read in between would see an empty or half list, unlock everyone and
/// forget their counters. SIGHUP reads at once.
const SETTLE: Duration = Duration::from_secs(1);

/// The shortest time between the starts of two writes. A lone lock is
/// written at once; in a storm, the locks set within this time of the last
/// write's start wait and go together in the next write, so the list is
/// rewritten at most 20 times a second. Every write copies and fsyncs the
/// whole list: back to back, a storm of 5 000 locks in 17 s took 3 767
/// writes, 2.2 GB written to disk and a quarter of a core; with this floor,
/// 344 writes and 234 MB (docs/benchmarks.md, section 3). A reply that
/// enforces a new lock waits for at most this plus one write.
const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// At most one "lock written" line per this interval: in a storm the writer
/// commits a batch every few milliseconds, and one line a second summing
/// them up says as much.
const WRITE_LOG_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileLocks {
    /// The normal form identities in the file are compared in.
    fn normaliser(&self) -> Normaliser {
        self.normalise.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Compares identities in the file in a new normal form (a reloaded
    /// `[identity]`, with other realms, say); takes effect at the next
    /// [`FileLocks::reload`], which the caller forces.
    pub fn set_normaliser(&self, normalise: Normaliser) {
        *self.normalise.write().unwrap_or_else(|p| p.into_inner()) = normalise;
    }

    /// Loads the lock list. An unparsable list is an error here: at start
    /// there is no last good list to keep in force.
    pub fn open(path: &Path, normalise: Normaliser) -> Result<Arc<Self>, LockFileError> {
        let seen = fingerprint(path);
        let list = LockList::read(path, &*normalise)?;
        let locks = Arc::new(Self {
            path: path.to_owned(),
            normalise: RwLock::new(normalise),
            active: RwLock::new(Arc::new(HashMap::new())),
            patterns: RwLock::new(Arc::new(Patterns::default())),
            pending: DashMap::new(),
            next_batch: Mutex::new(1),
            progress: watch::Sender::new(Progress::default()),
            wake: Notify::new(),
            write_log: Mutex::new(WriteLog::default()),
            seen: Mutex::new(seen),
            written: Mutex::new(None),
            unlocked_backlog: Mutex::new(Vec::new()),
            stats: LockStats::default(),
            version: AtomicU64::new(0),
        });
        locks.install(list);
        // Count only locks added while running.
        locks.stats.added_manual.store(0, Ordering::Relaxed);
        Ok(locks)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &LockStats {
        &self.stats
    }

    fn install(&self, list: LockList) -> Arc<HashMap<String, Arc<LockEntry>>> {
        let map: HashMap<_, _> = list
            .entries
            .into_iter()
            .map(|e| (e.identity.clone(), Arc::new(e)))
            .collect();
        let map = Arc::new(map);
        self.set_patterns(Patterns::new(map.values()));
        self.version.fetch_add(1, Ordering::Relaxed);
        let old = match self.active.write() {
            Ok(mut active) => std::mem::replace(&mut *active, map.clone()),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), map.clone()),
        };
        // Manual locks new to the daemon, however they reached the file.
        let manual = map
            .iter()
            .filter(|(id, e)| e.source == LockSource::Manual && old.get(*id).is_none_or(|o| o.locked_at != e.locked_at))
            .count();
        self.stats.added_manual.fetch_add(manual as u64, Ordering::Relaxed);
        old
    }

    fn set_patterns(&self, patterns: Patterns) {
        match self.patterns.write() {
            Ok(mut p) => *p = Arc::new(patterns),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(patterns),
        }
    }

    fn patterns(&self) -> Arc<Patterns> {
        match self.patterns.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies an admin's change to the lock list at once: writes pending
    /// locks first (so that none is written back over the change), edits
    /// the file under the writers' lock and installs the result. Returns
    /// `change`'s answer and the identities whose lock the change lifted.
    /// Blocking: call it off the runtime.
    pub fn edit<T>(
        &self,
        change: impl FnOnce(&mut LockList) -> Result<(T, bool), String>,
    ) -> Result<(T, Vec<String>), String> {
        if let Err(e) = self.flush() {
            return Err(format!("cannot write the pending locks first: {e}"));
        }
        let mut snapshot = lock(&self.written);
        let mut answer = None;
        let mut error = None;
        lockfile::update_cached(&self.path, &*self.normaliser(), &mut snapshot, |list| {
            match change(list) {
                Ok((t, changed)) => {
                    answer = Some(t);
                    if changed { Change::Edited } else { Change::None }
                }
                Err(e) => {
                    error = Some(e);
                    Change::None
                }
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(e) = error {
            return Err(e);
        }
        let Some(written) = snapshot.as_ref() else {
            return Err("the lock list was not read".into());
        };
        *lock(&self.seen) = written.fingerprint;
        let old = self.install(written.list.clone());
        let lifted = lifted(&old, &self.active(), SystemTime::now());
        let answer = answer.ok_or_else(|| "the change was not applied".to_string())?;
        Ok((answer, lifted))
    }

    fn active(&self) -> Arc<HashMap<String, Arc<LockEntry>>> {
        match self.active.read() {
            Ok(active) => active.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// All entries in force or recorded, with the unwritten ones, for display.
    pub fn entries(&self) -> Vec<Arc<LockEntry>> {
        let active = self.active();
        let mut all: Vec<_> = active.values().cloned().collect();
        for p in self.pending.iter() {
            if !active.contains_key(p.key()) {
                all.push(p.value().entry.clone());
            }
        }
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    /// A number that changes whenever [`FileLocks::entries`] may have.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Applies changes made elsewhere in the fleet: each identity gets the
    /// entry given (added or replaced), or is unlocked (`None`). Written to
    /// the file at once, through the writers' lock like any other write.
    /// Returns the identities unlocked. Blocking: call it off the runtime.
    pub fn apply_fleet(&self, changes: &[(String, Option<LockEntry>)]) -> Result<Vec<String>, LockFileError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // Enforced first, written next: a lock the fleet set is in force
        // here before its line is in the file (it is on Redis already).
        let before = self.active();
        {
            let mut active = match self.active.write() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            let map = Arc::make_mut(&mut *active);
            for (identity, entry) in changes {
                match entry {
                    Some(e) => map.insert(identity.clone(), Arc::new(e.clone())),
                    None => map.remove(identity),
                };
            }
            if changes
                .iter()
                .any(|(id, _)| pattern::Target::of(id) != pattern::Target::Identity)
            {
                self.set_patterns(Patterns::new(map.values()));
            }
            self.version.fetch_add(1, Ordering::Relaxed);
        }
        let mut snapshot = lock(&self.written);
        let written = lockfile::update_cached(&self.path, &*self.normaliser(), &mut snapshot, |list| {
            for (identity, entry) in changes {
                let at = list.entries.iter().position(|e| e.identity == *identity);
                match (at, entry) {
                    (Some(i), Some(e)) => list.entries[i] = e.clone(),
                    (None, Some(e)) => list.entries.push(e.clone()),
                    (Some(i), None) => {
                        list.entries.remove(i);
                    }
                    (None, None) => {}
                }
            }
            Change::Edited
        });
        if let Err(e) = written {
            // The file (corrupt, read-only, full disk) is what this host
            // agreed with the fleet on: put back what it says, so that the
            // fleet's changes are applied again once it can be written, and
            // an admin's fix of it is not taken for unlocks of them.
            let mut active = match self.active.write() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            *active = before;
            self.set_patterns(Patterns::new(active.values()));
            self.version.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let Some(written) = snapshot.as_ref() else {
            return Ok(Vec::new());
        };
        *lock(&self.seen) = written.fingerprint;
        self.install(written.list.clone());
        let new = self.active();
        for (identity, entry) in changes {
            // A lock of this host not yet written that the fleet replaced or
            // lifted: the fleet's word is the newer one.
            if entry.as_ref().is_none_or(|e| {
                self.pending
                    .get(identity)
                    .is_some_and(|p| p.entry.locked_at != e.locked_at)
            }) {
                self.pending.remove(identity);
            }
        }
        Ok(lifted(&before, &new, SystemTime::now()))
    }

    /// Number of locks set by the daemon and not yet written.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Re-reads the file if it changed since it was last seen (or always, if
    /// `force`). A list that does not parse is logged and the last good list
    /// stays in force. Returns the identities that were unlocked.
    pub fn reload(&self, force: bool) -> Vec<String> {
        let backlog = std::mem::take(&mut *lock(&self.unlocked_backlog));
        let now_seen = fingerprint(&self.path);
        // A file replaced by rename (the CLI, most editors) is complete: read
        // at once. One written in place may be half written: let it settle.
        let replaced = lock(&self.seen)
            .zip(now_seen)
            .is_some_and(|(seen, now)| seen.inode() != now.inode());
        if !force && !replaced && now_seen.is_some_and(|f| f.modified_within(SETTLE)) {
            // Still being written, perhaps: look again at the next poll.
            return backlog;
        }
        {
            let mut seen = lock(&self.seen);
            if !force && *seen == now_seen {
                return backlog;
            }
            *seen = now_seen;
        }
        match LockList::read(&self.path, &*self.normaliser()) {
            Ok(list) => {
                let old = self.install(list);
                let new = self.active();
                let added: Vec<_> = new.keys().filter(|k| !old.contains_key(*k)).cloned().collect();
                // Removed, or made to lapse (an unlock that keeps the history).
                let mut removed = lifted(&old, &new, SystemTime::now());
                self.stats.corrupt.store(false, Ordering::Relaxed);
                if !added.is_empty() || !removed.is_empty() || force {
                    info!(
                        file = %self.path.display(),
                        locks = new.len(),
                        added = %summarise(&added),
                        removed = %summarise(&removed),
                        "lock list reloaded"
                    );
                }
                removed.extend(backlog);
                removed
            }
            Err(e) => {
                self.stats.corrupt.store(true, Ordering::Relaxed);
                error!(
                    "lock list not reloaded, keeping the last good list ({} locks) in force: {e}",
                    self.active().len()
                );
                backlog
            }
        }
    }

    /// Writes every pending lock to the file in one batch, then tells the
    /// tickets of the batch (and of any earlier one). Returns the number of
    /// locks written, or an error (the locks stay pending, still enforced,
    /// and their tickets learn that the store is failing).
    pub fn flush(&self) -> Result<usize, LockFileError> {
        // One writer at a time: batches are published in order.
        let mut snapshot = lock(&self.written);
        let number = {
            let mut next = lock(&self.next_batch);
            let n = *next;
            *next += 1;
            n
        };
        let batch: Vec<LockEntry> = self.pending.iter().map(|p| (*p.value().entry).clone()).collect();
        if batch.is_empty() {
            self.publish(number);
            return Ok(0);
        }
        let started = Instant::now();
        if let Err(e) = self.write_batch(&mut snapshot, &batch) {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.stats.write_failing.store(true, Ordering::Relaxed);
            self.progress.send_modify(|p| p.failing = true);
            return Err(e);
        }
        let took = started.elapsed();
        for entry in &batch {
            self.pending
                .remove_if(&entry.identity, |_, pending| pending.entry.locked_at == entry.locked_at);
        }
        self.stats.write_failing.store(false, Ordering::Relaxed);
        // Logged before the tickets learn of it, so that the "lock written"
        // line is in the log before the reply that enforces the lock.
        {
            let mut log = lock(&self.write_log);
            log.add(&batch, took);
            if log.last.is_none_or(|t| t.elapsed() >= WRITE_LOG_INTERVAL) {
                log.emit(&self.path);
            }
        }
        self.publish(number);
        Ok(batch.len())
    }

    /// Merges `batch` into the file and the locks in force.
    fn write_batch(&self, snapshot: &mut Option<Snapshot>, batch: &[LockEntry]) -> Result<(), LockFileError> {
        let mut changed = Vec::new();
        let updated = lockfile::update_cached(&self.path, &*self.normaliser(), snapshot, |list| {
            let merged = merge(list, batch);
            let change = if merged.changed.is_empty() {
                Change::None
            } else if merged.replaced {
                Change::Edited
            } else {
                Change::Appended
            };
            changed = merged.changed;
            change
        })?;
        let Some(snapshot) = snapshot.as_ref() else {
            return Ok(());
        };
        *lock(&self.seen) = snapshot.fingerprint;
        if updated.reread {
            // Someone else changed the file since our last write: it is the
            // truth now, including any unlocks the watcher has not seen yet.
            let old = self.install(snapshot.list.clone());
            let new = self.active();
            lock(&self.unlocked_backlog).extend(lifted(&old, &new, SystemTime::now()));
        } else {
            self.extend_active(changed.iter().map(|&i| snapshot.list.entries[i].clone()));
        }
        Ok(())
    }

    /// Tells the tickets that batch `number` and those before it are on
    /// disk (and that the writer is not failing: nothing is left pending
    /// from an earlier failure).
    fn publish(&self, number: u64) {
        self.progress.send_modify(|p| {
            p.written = p.written.max(number);
            p.failing = false;
        });
    }

    /// Adds entries just written to the locks in force without rebuilding
    /// the map (it is copied only if a reader holds it at this moment).
    fn extend_active(&self, entries: impl Iterator<Item = LockEntry>) {
        let mut active = match self.active.write() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let map = Arc::make_mut(&mut *active);
        self.version.fetch_add(1, Ordering::Relaxed);
        let mut patterns = false;
        for e in entries {
            patterns |= pattern::Target::of(&e.identity) != pattern::Target::Identity;
            map.insert(e.identity.clone(), Arc::new(e));
        }
        if patterns {
            self.set_patterns(Patterns::new(map.values()));
        }
    }

    /// The background writer: a group commit. It wakes at once on a new
    /// lock and writes every lock pending at that moment in one batch; locks
    /// set while a batch is being written, or within [`MIN_WRITE_INTERVAL`]
    /// of its start, go together in the next one, so a storm costs at most
    /// one write per interval, not one per lock. Failures are retried every
    /// `retry` while the locks stay enforced in memory. Returns when
    /// `shutdown` resolves, after a last flush.
    pub async fn run_writer(self: Arc<Self>, retry: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_write: Option<tokio::time::Instant> = None;
        loop {
            let log_due = lock(&self.write_log).due();
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep_until(log_due) => {
                    lock(&self.write_log).emit(&self.path);
                    continue;
                }
                () = &mut shutdown => break,
            }
            if let Some(t) = last_write {
                tokio::select! {
                    () = tokio::time::sleep_until(t + MIN_WRITE_INTERVAL) => {}
                    () = &mut shutdown => break,
                }
            }
            last_write = Some(tokio::time::Instant::now());
            loop {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.flush()).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => error!(
                        "cannot write {} new lock(s) to the lock list, retrying in {}s (the locks are enforced meanwhile): {e}",
                        self.pending.len(),
                        retry.as_secs()
                    ),
                    Err(e) => error!("lock list writer failed: {e}"),
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = &mut shutdown => return self.final_flush(),
                }
            }
        }
        self.final_flush();
    }

    fn final_flush(&self) {
        let result = self.flush();
        lock(&self.write_log).emit(&self.path);
        match result {
            Ok(0) => {}
            Ok(n) => info!("wrote {n} pending lock(s) to the lock list before stopping"),
            Err(e) => {
                for entry in self.pending.iter() {
                    error!(
                        identity = %entry.entry.identity,
                        reason = %entry.entry.reason,
                        "lock could not be written before stopping; add it again with `egress-milter locks add`"
                    );
                }
                error!("lock list not written before stopping: {e}");
            }
        }
    }

    /// Polls the file for changes every `interval`, until `shutdown`, and
    /// calls `unlocked` with the identities an edit unlocked.
    pub async fn run_watcher(
        self: Arc<Self>,
        interval: Duration,
        unlocked: impl Fn(&[String]) + Send + 'static,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let me = self.clone();
                    match tokio::task::spawn_blocking(move || me.reload(false)).await {
                        Ok(removed) if !removed.is_empty() => unlocked(&removed),
                        Ok(_) => {}
                        Err(e) => warn!("lock list watcher failed: {e}"),
                    }
                }
                () = &mut shutdown => break,
            }
        }
    }
}

impl LockStore for FileLocks {
    fn lookup(&self, identity: &str, now: SystemTime) -> Option<Arc<LockEntry>> {
        // One shard's read lock; `is_empty()` first would lock them all.
        if let Some(p) = self.pending.get(identity) {
            return Some(p.value().entry.clone());
        }
        let active = self.active();
        if let Some(e) = active.get(identity).filter(|e| e.is_active(now)) {
            return Some(e.clone());
        }
        let patterns = self.patterns();
        if patterns.is_empty() {
            return None;
        }
        if let Some(e) = patterns.domain_lock(identity, now) {
            return Some(e);
        }
        if patterns.has_networks()
            && let Ok(ip) = identity.parse::<IpAddr>()
        {
            return patterns.network_lock(ip, now);
        }
        None
    }

    fn lookup_client(&self, ip: IpAddr, now: SystemTime) -> Option<Arc<LockEntry>> {
        self.patterns().network_lock(ip, now)
    }

    fn lock(&self, entry: LockEntry, now: SystemTime) -> bool {
        if self.lookup(&entry.identity, now).is_some() {
            return false;
        }
        let id = entry.identity.clone();
        let fresh = {
            let batch = lock(&self.next_batch);
            match self.pending.entry(id) {
                dashmap::mapref::entry::Entry::Occupied(_) => false,
                dashmap::mapref::entry::Entry::Vacant(slot) => {
                    slot.insert(Pending {
                        entry: Arc::new(entry),
                        batch: *batch,
                    });
                    true
                }
            }
        };
        if fresh {
            self.version.fetch_add(1, Ordering::Relaxed);
            self.stats.added_auto.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
        fresh
    }

    fn durability(&self, identity: &str) -> Option<Ticket> {
        let batch = self.pending.get(identity)?.batch;
        // Subscribed after the lookup: if the batch was published meanwhile,
        // `wait_for` sees it in the current value.
        let mut progress = self.progress.subscribe();
        Some(Ticket::new(async move {
            match progress.wait_for(|p| p.written >= batch || p.failing).await {
                Ok(p) if p.written >= batch => Durability::Written,
                _ => Durability::Failing,
            }
        }))
    }
}

/// The locks written since the last "lock written" line.
#[derive(Default)]
struct WriteLog {
    /// When the last line was logged.
    last: Option<Instant>,
    /// The first few identities, for the line.
    identities: Vec<String>,
    locks: usize,
    batches: usize,
    largest_batch: usize,
    slowest_write: Duration,
}

impl WriteLog {
    fn add(&mut self, batch: &[LockEntry], took: Duration) {
        for e in batch.iter().take(SHOWN.saturating_sub(self.identities.len())) {
            self.identities.push(e.identity.clone());
        }
        self.locks += batch.len();
        self.batches += 1;
        self.largest_batch = self.largest_batch.max(batch.len());
        self.slowest_write = self.slowest_write.max(took);
    }

    /// When the summary of what is not logged yet is due; `None` if nothing is.
    fn due(&self) -> Option<Instant> {
        if self.locks == 0 {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |t| t + WRITE_LOG_INTERVAL))
    }

    /// Logs the locks written since the last line, if any.
    fn emit(&mut self, path: &Path) {
        if self.locks == 0 {
            return;
        }
        let mut identities = self.identities.join(",");
        if self.locks > self.identities.len() {
            identities.push_str(&format!(",+{} more", self.locks - self.identities.len()));
        }
        info!(
            file = %path.display(),
            identities = %identities,
            locks = self.locks,
            batches = self.batches,
            largest_batch = self.largest_batch,
            slowest_write_ms = self.slowest_write.as_millis() as u64,
            "{}",
            if self.locks == 1 { "lock written" } else { "locks written" }
        );
        *self = WriteLog {
            last: Some(Instant::now()),
            ..WriteLog::default()
        };
    }
}

/// Sleeps until `t`, or forever.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// What [`merge`] changed.
struct Merged {
    /// Indices of the entries added or replaced.
    changed: Vec<usize>,
    /// Some of them replaced an entry (otherwise they were all appended).
    replaced: bool,
}

/// Adds the daemon's locks to the list read from the file. An identity the
/// file already locks keeps the file's entry; a lapsed entry is replaced and
/// its count of earlier locks carried on.
fn merge(list: &mut LockList, batch: &[LockEntry]) -> Merged {
    enum Slot {
        Keep,
        Replace(usize),
        Append,
    }
    let now = SystemTime::now();
    // Decided against the list as read; the identities of a batch are
    // distinct (pending locks are keyed by identity).
    let slots: Vec<Slot> = {
        let index: HashMap<&str, usize> = list
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.identity.as_str(), i))
            .collect();
        batch
            .iter()
            .map(|entry| match index.get(entry.identity.as_str()) {
                Some(&i) if list.entries[i].is_active(now) => Slot::Keep,
                Some(&i) => Slot::Replace(i),
                None => Slot::Append,
            })
            .collect()
    };
    let mut merged = Merged {
        changed: Vec::new(),
        replaced: false,
    };
    for (entry, slot) in batch.iter().zip(slots) {
        match slot {
            Slot::Keep => {}
            Slot::Replace(i) => {
                let mut entry = entry.clone();
                entry.previous_locks = list.entries[i].previous_locks + 1;
                list.entries[i] = entry;
                merged.changed.push(i);
                merged.replaced = true;
            }
            Slot::Append => {
                merged.changed.push(list.entries.len());
                list.entries.push(entry.clone());
            }
        }
    }
    merged
}

/// The identities whose lock was in force in `old` and is not in `new`:
/// removed from the list, or made to lapse by an unlock.
fn lifted(
    old: &HashMap<String, Arc<LockEntry>>,
    new: &HashMap<String, Arc<LockEntry>>,
    now: SystemTime,
) -> Vec<String> {
    old.iter()
        .filter(|(id, e)| e.is_active(now) && new.get(*id).is_none_or(|n| !n.is_active(now)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// How many identities a log line names before it says "+N more".
const SHOWN: usize = 5;

fn summarise(ids: &[String]) -> String {
    let mut s = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(",");
    if ids.len() > SHOWN {
        s.push_str(&format!(",+{} more", ids.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::file::Timestamp;

    fn norm() -> Normaliser {
        Arc::new(|s: &str| s.trim().to_lowercase())
    }

    /// Writes the lock list as an admin would and lets the edit settle.
    fn hand_edit(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        let past = SystemTime::now() - 2 * SETTLE;
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    fn entry(id: &str, at: u64) -> LockEntry {
        LockEntry {
            identity: id.into(),
            source: LockSource::Auto,
            locked_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
            reason: "test".into(),
            rule: None,
            previous_locks: 0,
            expires_at: None,
            note: None,
            history: Vec::new(),
        }
    }

    #[test]
    fn locks_are_enforced_before_they_are_written_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        assert!(locks.lock(entry("a@x", 1), now));
        assert!(!locks.lock(entry("a@x", 2), now), "already locked");
        assert!(locks.lookup("a@x", now).is_some());
        assert!(!path.exists(), "nothing written yet");
        assert_eq!(locks.flush().unwrap(), 1);
        assert_eq!(locks.pending_writes(), 0);
        let reopened = FileLocks::open(&path, norm()).unwrap();
        assert!(reopened.lookup("a@x", now).is_some());
    }

    /// Whether a ticket has resolved, without waiting.
    async fn resolved(ticket: Ticket) -> Option<Durability> {
        tokio::time::timeout(Duration::ZERO, ticket.wait()).await.ok()
    }

    #[tokio::test]
    async fn a_ticket_resolves_once_its_lock_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        assert!(locks.durability("a@x").is_none(), "no lock, nothing to wait for");
        locks.lock(entry("a@x", 1), now);
        assert_eq!(resolved(locks.durability("a@x").unwrap()).await, None);
        let waiting = locks.durability("a@x").unwrap();
        assert_eq!(locks.flush().unwrap(), 1);
        assert!(LockList::read(&path, |s| s.to_string()).unwrap().get("a@x").is_some());
        assert_eq!(resolved(waiting).await, Some(Durability::Written));
        assert!(locks.durability("a@x").is_none(), "on disk");

        // A later lock waits for a later batch, not for the one written.
        locks.lock(entry("b@x", 2), now);
        let b = locks.durability("b@x").unwrap();
        assert_eq!(resolved(locks.durability("b@x").unwrap()).await, None);
        locks.flush().unwrap();
        assert_eq!(resolved(b).await, Some(Durability::Written));
    }

    #[tokio::test]
    async fn a_failing_write_releases_the_tickets_and_a_retry_writes_the_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        hand_edit(&path, "[[lock]]\nidentity = ");
        locks.lock(entry("a@x", 1), now);
        let waiting = locks.durability("a@x").unwrap();
        assert!(locks.flush().is_err());
        assert_eq!(resolved(waiting).await, Some(Durability::Failing));
        assert!(locks.stats().write_failing.load(Ordering::Relaxed));
        // While the writer fails, a new lock does not wait for it either.
        locks.lock(entry("b@x", 2), now);
        assert_eq!(
            resolved(locks.durability("b@x").unwrap()).await,
            Some(Durability::Failing)
        );
        assert!(locks.lookup("b@x", now).is_some(), "enforced from memory");
        // The list is fixed: the retry writes both and the next ticket waits
        // for a write again.
        hand_edit(&path, "");
        assert_eq!(locks.flush().unwrap(), 2);
        assert!(!locks.stats().write_failing.load(Ordering::Relaxed));
        assert!(locks.durability("a@x").is_none() && locks.durability("b@x").is_none());
        locks.lock(entry("c@x", 3), now);
        assert_eq!(resolved(locks.durability("c@x").unwrap()).await, None);
    }

    #[tokio::test]
    async fn the_writer_commits_a_storm_in_few_batches_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(locks.clone().run_writer(Duration::from_secs(5), async {
            let _ = stopped.await;
        }));
        let now = SystemTime::now();
        let mut tickets = Vec::new();
        for i in 0..200 {
            let id = format!("u{i}@x");
            locks.lock(entry(&id, i), now);
            tickets.push(locks.durability(&id).unwrap());
            if i % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for t in tickets {
            let done = tokio::time::timeout(Duration::from_secs(10), t.wait()).await;
            assert_eq!(done, Ok(Durability::Written));
        }
        let list = LockList::read(&path, |s| s.to_string()).unwrap();
        assert_eq!(list.entries.len(), 200);
        let batches = *lock(&locks.next_batch) - 1;
        assert!(batches < 200, "{batches} writes for 200 locks");
        let _ = stop.send(());
        writer.await.unwrap();
    }

    #[test]
    fn hand_edits_are_picked_up_and_corrupt_edits_keep_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        locks.lock(entry("a@x", 1), now);
        locks.flush().unwrap();

        // A half-finished edit: "a@x" stays locked.
        hand_edit(&path, "[[lock]]\nidentity = \"b@x\"\nsource = ");
        locks.reload(false);
        assert!(locks.lookup("a@x", now).is_some());
        assert!(locks.lookup("b@x", now).is_none());
        // And the writer refuses to overwrite it.
        locks.lock(entry("c@x", 3), now);
        assert!(matches!(locks.flush(), Err(LockFileError::Corrupt { .. })));
        assert!(locks.lookup("c@x", now).is_some(), "still enforced while unwritten");

        // The admin finishes the edit: a@x unlocked, b@x locked, c@x written.
        hand_edit(
            &path,
            "[[lock]]\nidentity = \"B@x\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"r\"\n",
        );
        locks.reload(false);
        assert!(locks.lookup("a@x", now).is_none());
        assert!(locks.lookup("b@x", now).is_some());
        assert_eq!(locks.flush().unwrap(), 1);
        let list = LockList::read(&path, |s| s.to_string()).unwrap();
        let ids: Vec<_> = list.entries.iter().map(|e| e.identity.as_str()).collect();
        assert_eq!(ids, ["b@x", "c@x"]);
    }

    #[test]
    fn relocking_after_expiry_counts_earlier_locks() {
        let mut list = LockList::default();
        let mut old = entry("a@x", 1);
        old.previous_locks = 1;
        old.expires_at = Some(Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(2)));
        list.entries.push(old);
        let merged = merge(&mut list, &[entry("a@x", 10)]);
        assert_eq!(merged.changed, [0]);
        assert!(merged.replaced);
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.entries[0].previous_locks, 2);
        // An active manual lock is kept as it is.
        let mut manual = entry("m@x", 1);
        manual.source = LockSource::Manual;
        list.entries.push(manual.clone());
        assert!(merge(&mut list, &[entry("m@x", 10)]).changed.is_empty());
        assert_eq!(list.entries[1], manual);
    }

    #[test]
    fn expired_locks_lift_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        std::fs::write(
            &path,
            "[[lock]]\nidentity = \"a@x\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"r\"\nexpires_at = \"2026-11-24T10:00:00Z\"\n",
        )
        .unwrap();
        let locks = FileLocks::open(&path, norm()).unwrap();
        let expiry = humantime::parse_rfc3339("2026-11-24T10:00:00Z").unwrap();
        assert!(locks.lookup("a@x", expiry - Duration::from_secs(1)).is_some());
        assert!(locks.lookup("a@x", expiry).is_none());
    }

    #[test]
    fn an_unlock_the_writer_comes_across_reaches_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        locks.lock(entry("a@x", 1), now);
        locks.flush().unwrap();
        // The admin deletes a@x by hand; before the watcher looks, a new lock
        // makes the writer re-read the changed file.
        std::fs::write(&path, "").unwrap();
        locks.lock(entry("b@x", 2), now);
        assert_eq!(locks.flush().unwrap(), 1);
        assert!(locks.lookup("a@x", now).is_none());
        assert!(locks.lookup("b@x", now).is_some());
        // The file is unchanged since the writer saw it, yet the watcher
        // still learns that a@x was unlocked (so its counters are forgotten).
        assert_eq!(locks.reload(false), ["a@x"]);
        assert!(locks.reload(false).is_empty());
    }

    #[test]
    fn the_writer_rereads_only_what_someone_else_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        for i in 0..5 {
            locks.lock(entry(&format!("u{i}@x"), i), now);
            locks.flush().unwrap();
        }
        // Another writer (the CLI) adds an entry under the writers' lock.
        lockfile::update(
            &path,
            |s: &str| s.to_string(),
            |l| {
                l.upsert(entry("cli@x", 9));
                true
            },
        )
        .unwrap();
        locks.lock(entry("u9@x", 10), now);
        locks.flush().unwrap();
        let list = LockList::read(&path, |s| s.to_string()).unwrap();
        let ids: Vec<_> = list.entries.iter().map(|e| e.identity.as_str()).collect();
        assert_eq!(ids, ["u0@x", "u1@x", "u2@x", "u3@x", "u4@x", "cli@x", "u9@x"]);
        for id in ids {
            assert!(locks.lookup(id, now).is_some(), "{id} in force");
        }
    }

    #[test]
    fn a_file_still_being_written_is_not_read_until_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let locks = FileLocks::open(&path, norm()).unwrap();
        let now = SystemTime::now();
        locks.lock(entry("a@x", 1), now);
        locks.flush().unwrap();
        // An editor writing in place has truncated the file and not yet
        // written it back: the watcher must not take that as "unlock all".
        std::fs::write(&path, "").unwrap();
        assert!(locks.reload(false).is_empty());
        assert!(locks.lookup("a@x", now).is_some());
        // Once it has settled, the edit is the truth (here: unlock all).
        hand_edit(&path, "");
        assert_eq!(locks.reload(false), ["a@x"]);
        // SIGHUP does not wait.
        std::fs::write(
            &path,
            "[[lock]]\nidentity = \"b@x\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"r\"\n",
        )
        .unwrap();
        locks.reload(true);
        assert!(locks.lookup("b@x", now).is_some());
    }
}

#[cfg(test)]
mod pattern_tests {
    use super::*;

    /// `@domain` and network entries match every identity they cover.
    #[test]
    fn domain_and_network_entries_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        std::fs::write(
            &path,
            "[[lock]]\nidentity = \"@example.com\"\nsource = \"manual\"\nlocked_at = \"2026-01-01T00:00:00Z\"\nreason = \"r\"\n\n[[lock]]\nidentity = \"203.0.113.0/24\"\nsource = \"manual\"\nlocked_at = \"2026-01-01T00:00:00Z\"\nreason = \"r\"\n",
        )
        .unwrap();
        let locks = FileLocks::open(&path, Arc::new(|s: &str| s.trim().to_lowercase())).unwrap();
        let now = SystemTime::now();
        assert!(locks.lookup("dave@example.com", now).is_some());
        assert!(locks.lookup("dave@example.org", now).is_none());
        assert!(locks.lookup("203.0.113.9", now).is_some());
        assert!(locks.lookup_client("203.0.113.9".parse().unwrap(), now).is_some());
        assert!(locks.lookup_client("203.0.114.9".parse().unwrap(), now).is_none());
    }
}
