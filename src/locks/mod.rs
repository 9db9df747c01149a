// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Locks in force: an in-memory view of the lock list, updated at once when
//! the daemon locks an identity and persisted by a background writer, plus a
//! watcher that picks up edits made by hand or by the CLI.

pub mod file;

use crate::config::Config;
use crate::config::address::lock_key;
use dashmap::DashMap;
use file::{self as lockfile, Fingerprint, LockEntry, LockFileError, LockList, LockSource, Snapshot, fingerprint};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// What the milter needs of a lock store. It is deliberately narrow so that a
/// shared backend for a fleet of MTAs can stand in for the file.
pub trait LockStore: Send + Sync + 'static {
    /// The lock in force for a normalised identity at `now`, if any.
    fn lookup(&self, identity: &str, now: SystemTime) -> Option<Arc<LockEntry>>;

    /// Locks an identity at once; it is persisted in the background. Returns
    /// `false` if the identity was already locked.
    fn lock(&self, entry: LockEntry, now: SystemTime) -> bool;
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
    normalise: Normaliser,
    /// The last list read or written successfully.
    active: RwLock<Arc<HashMap<String, Arc<LockEntry>>>>,
    /// Locks set by the daemon and not yet written to the file. They are
    /// enforced from the moment they are set.
    pending: DashMap<String, Arc<LockEntry>>,
    /// Wakes the writer.
    wake: Notify,
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

/// How long the writer waits after the first new lock before writing, so a
/// storm of locks becomes a few writes a second instead of one per lock.
/// The locks are enforced in memory meanwhile.
const WRITE_COALESCE: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileLocks {
    /// Loads the lock list. An unparsable list is an error here: at start
    /// there is no last good list to keep in force.
    pub fn open(path: &Path, normalise: Normaliser) -> Result<Arc<Self>, LockFileError> {
        let seen = fingerprint(path);
        let list = LockList::read(path, &*normalise)?;
        let locks = Arc::new(Self {
            path: path.to_owned(),
            normalise,
            active: RwLock::new(Arc::new(HashMap::new())),
            pending: DashMap::new(),
            wake: Notify::new(),
            seen: Mutex::new(seen),
            written: Mutex::new(None),
            unlocked_backlog: Mutex::new(Vec::new()),
            stats: LockStats::default(),
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
                all.push(p.value().clone());
            }
        }
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
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
        if !force && now_seen.is_some_and(|f| f.modified_within(SETTLE)) {
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
        match LockList::read(&self.path, &*self.normalise) {
            Ok(list) => {
                let old = self.install(list);
                let new = self.active();
                let added: Vec<_> = new.keys().filter(|k| !old.contains_key(*k)).cloned().collect();
                let mut removed: Vec<_> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
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

    /// Writes every pending lock to the file. Returns an error (and keeps the
    /// locks pending, still enforced) if the file cannot be written.
    pub fn flush(&self) -> Result<usize, LockFileError> {
        let batch: Vec<LockEntry> = self.pending.iter().map(|e| (**e.value()).clone()).collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let count = batch.len();
        let mut snapshot = lock(&self.written);
        let mut changed = Vec::new();
        let updated = lockfile::update_cached(&self.path, &*self.normalise, &mut snapshot, |list| {
            changed = merge(list, &batch);
            !changed.is_empty()
        })?;
        let Some(snapshot) = snapshot.as_ref() else {
            return Ok(0);
        };
        *lock(&self.seen) = snapshot.fingerprint;
        if updated.reread {
            // Someone else changed the file since our last write: it is the
            // truth now, including any unlocks the watcher has not seen yet.
            let old = self.install(snapshot.list.clone());
            let new = self.active();
            lock(&self.unlocked_backlog).extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
        } else {
            self.extend_active(changed.iter().map(|&i| snapshot.list.entries[i].clone()));
        }
        for entry in &batch {
            self.pending
                .remove_if(&entry.identity, |_, pending| pending.locked_at == entry.locked_at);
        }
        Ok(count)
    }

    /// Adds entries just written to the locks in force without rebuilding
    /// the map (it is copied only if a reader holds it at this moment).
    fn extend_active(&self, entries: impl Iterator<Item = LockEntry>) {
        let mut active = match self.active.write() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let map = Arc::make_mut(&mut *active);
        for e in entries {
            map.insert(e.identity.clone(), Arc::new(e));
        }
    }

    /// The background writer: persists pending locks as they come, batching a
    /// storm into few writes, retrying failures while the locks stay enforced
    /// in memory. Returns when `shutdown` resolves, after a last flush.
    pub async fn run_writer(self: Arc<Self>, retry: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = &mut shutdown => break,
            }
            tokio::select! {
                () = tokio::time::sleep(WRITE_COALESCE) => {}
                () = &mut shutdown => break,
            }
            loop {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.flush()).await {
                    Ok(Ok(_)) => {
                        self.stats.write_failing.store(false, Ordering::Relaxed);
                        break;
                    }
                    Ok(Err(e)) => {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        self.stats.write_failing.store(true, Ordering::Relaxed);
                        error!(
                            "cannot write {} new lock(s) to the lock list, retrying in {}s (the locks are enforced meanwhile): {e}",
                            self.pending.len(),
                            retry.as_secs()
                        )
                    }
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
        match self.flush() {
            Ok(0) => {}
            Ok(n) => info!("wrote {n} pending lock(s) to the lock list before stopping"),
            Err(e) => {
                for entry in self.pending.iter() {
                    error!(
                        identity = %entry.identity,
                        reason = %entry.reason,
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
            return Some(p.value().clone());
        }
        let active = self.active();
        active.get(identity).filter(|e| e.is_active(now)).cloned()
    }

    fn lock(&self, entry: LockEntry, now: SystemTime) -> bool {
        if self.lookup(&entry.identity, now).is_some() {
            return false;
        }
        let id = entry.identity.clone();
        let fresh = match self.pending.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(_) => false,
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(Arc::new(entry));
                true
            }
        };
        if fresh {
            self.stats.added_auto.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
        fresh
    }
}

/// Adds the daemon's locks to the list read from the file. An identity the
/// file already locks keeps the file's entry; a lapsed entry is replaced and
/// its count of earlier locks carried on. Returns the indices of the entries
/// added or replaced.
fn merge(list: &mut LockList, batch: &[LockEntry]) -> Vec<usize> {
    let now = SystemTime::now();
    let mut index: HashMap<String, usize> = list
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.identity.clone(), i))
        .collect();
    let mut changed = Vec::new();
    for entry in batch {
        match index.get(&entry.identity) {
            Some(&i) if list.entries[i].is_active(now) => {}
            Some(&i) => {
                let mut entry = entry.clone();
                entry.previous_locks = list.entries[i].previous_locks + 1;
                list.entries[i] = entry;
                changed.push(i);
            }
            None => {
                changed.push(list.entries.len());
                index.insert(entry.identity.clone(), list.entries.len());
                list.entries.push(entry.clone());
            }
        }
    }
    changed
}

fn summarise(ids: &[String]) -> String {
    const SHOWN: usize = 5;
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
        assert_eq!(merge(&mut list, &[entry("a@x", 10)]), [0]);
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.entries[0].previous_locks, 2);
        // An active manual lock is kept as it is.
        let mut manual = entry("m@x", 1);
        manual.source = LockSource::Manual;
        list.entries.push(manual.clone());
        assert!(merge(&mut list, &[entry("m@x", 10)]).is_empty());
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
