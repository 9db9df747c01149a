// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock list kept in step across a fleet.
//!
//! Every host keeps its own lock list file, the reviewable and editable view,
//! and enforces from it as on a single host: looking a lock up never asks
//! Redis. This task keeps the files in step through Redis, every
//! `SYNC_INTERVAL`:
//!
//! - Redis holds the fleet's list (`<prefix>{locks}:entries`) and a log of
//!   changes (`{locks}:log`, a stream, numbered by `{locks}:version`).
//! - The host remembers the *baseline*: the fleet's list as it last agreed
//!   with it (kept in `<lock list>.fleet` across restarts). What differs
//!   between the host's list and the baseline was changed here (a lock rule,
//!   the CLI, an editor): it is pushed, merged by `locks.lua`'s rule. What
//!   differs between the fleet's list and the baseline was changed elsewhere:
//!   it is written into the host's file.
//! - While Redis is unreachable nothing is lost: local changes stay in the
//!   file and are pushed when it returns. A Redis that comes back empty (its
//!   `{locks}:epoch` is gone) is given every host's locks again.

use crate::locks::file::LockEntry;
use crate::locks::{FileLocks, LockStore};
use crate::policy::shared::BoxFuture;
use crate::store::StoreStats;
use crate::store::link::RedisLink;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// How often the host looks for changes, here and in the fleet: a lock set
/// anywhere is enforced everywhere within about twice this.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// The pause after the lock list could not be written.
const WRITE_FAILED_PAUSE: Duration = Duration::from_secs(1);

/// How often, at most, the baseline file is rewritten.
const BASELINE_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Longest wait for one sync call (not in the mail path).
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// Changes pushed in one script call, and log entries read in one call.
const BATCH: usize = 500;

const MERGE: &str = include_str!("locks.lua");

/// The fleet's value of a lock: `"<locked_at ms> <JSON>"`.
type Value = String;

/// A stream entry: its id and fields.
type LogEntry = (String, HashMap<String, String>);

/// The log's last entry, the whole list, the change counter.
type FullRead = (Vec<LogEntry>, HashMap<String, Value>, Option<u64>);

/// What the host remembers of the fleet between syncs and restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Baseline {
    /// Redis' `{locks}:epoch` when this baseline was agreed.
    epoch: Option<String>,
    locks: HashMap<String, Value>,
}

/// Keeps one host's lock list in step with the fleet's.
pub struct LockSync {
    link: Arc<RedisLink>,
    locks: Arc<FileLocks>,
    host: String,
    entries_key: String,
    log_key: String,
    version_key: String,
    epoch_key: String,
    baseline_path: PathBuf,
    script: redis::Script,
    baseline: Baseline,
    /// Where the log was read up to, and the change number there.
    last_id: String,
    seen_version: u64,
    /// [`FileLocks::version`] when the host's list was last compared.
    local_version: Option<u64>,
    /// A full comparison is due (start, a gap in the log, Redis emptied).
    full: bool,
    /// Clears the counters of identities about to be unlocked here.
    forget: ForgetHook,
    /// Each local entry as last encoded, by identity.
    encoded: HashMap<String, (Arc<LockEntry>, Value)>,
    /// No round before this (the lock list could not be written).
    pause_until: Option<std::time::Instant>,
    /// The baseline changed since it was last saved, and when that was.
    baseline_dirty: bool,
    baseline_saved: Option<std::time::Instant>,
}

/// Called, and awaited, with the identities the fleet unlocked before the
/// unlock takes effect here: their counters must be empty by then, or the
/// attempts that locked them would lock them again at their next message.
pub type ForgetHook = Box<dyn Fn(Vec<String>) -> BoxFuture<'static, ()> + Send + Sync>;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An entry as the fleet stores it. The time in front is `locked_at` in
/// whole seconds (as milliseconds), the precision the lock list file and
/// the JSON keep: an entry read back from either encodes to the same value.
/// (With the milliseconds of a lock just set, the host that set it and a
/// host that read it from the fleet encoded one lock two ways, and pushed
/// their versions over each other every round.)
pub fn encode(entry: &LockEntry) -> Value {
    let json = serde_json::to_string(entry).unwrap_or_default();
    let secs = entry
        .locked_at
        .0
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} {json}", secs * 1000)
}

fn decode(value: &str) -> Option<LockEntry> {
    let (_, json) = value.split_once(' ')?;
    serde_json::from_str(json).ok()
}

fn locked_at_of(value: &str) -> u64 {
    value.split_once(' ').and_then(|(ms, _)| ms.parse().ok()).unwrap_or(0)
}

/// The file beside the lock list that keeps the baseline.
pub fn baseline_path(lock_list: &Path) -> PathBuf {
    let mut name = lock_list.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".fleet");
    lock_list.with_file_name(name)
}

impl LockSync {
    pub fn new(link: Arc<RedisLink>, locks: Arc<FileLocks>, prefix: &str, forget: ForgetHook) -> Self {
        let baseline_path = baseline_path(locks.path());
        let baseline = match std::fs::read(&baseline_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %baseline_path.display(), "fleet baseline unreadable, starting afresh (every local lock is offered to the fleet again): {e}");
                Baseline::default()
            }),
            Err(_) => Baseline::default(),
        };
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        Self {
            link,
            locks,
            host,
            entries_key: format!("{prefix}{{locks}}:entries"),
            log_key: format!("{prefix}{{locks}}:log"),
            version_key: format!("{prefix}{{locks}}:version"),
            epoch_key: format!("{prefix}{{locks}}:epoch"),
            baseline_path,
            script: redis::Script::new(MERGE),
            baseline,
            last_id: "0-0".into(),
            seen_version: 0,
            local_version: None,
            full: true,
            forget,
            encoded: HashMap::new(),
            pause_until: None,
            baseline_dirty: false,
            baseline_saved: None,
        }
    }

    fn stats(&self) -> &StoreStats {
        self.link.stats()
    }

    /// Syncs every [`SYNC_INTERVAL`] until `shutdown`.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => break,
            }
            if !self.link.available() || self.pause_until.is_some_and(|t| std::time::Instant::now() < t) {
                continue;
            }
            if let Err(e) = self.sync_once().await {
                debug!("lock sync: {e}");
            }
            self.save_baseline_if_due(false);
        }
        // A last push, so locks set just before a stop reach the fleet.
        if self.link.available() {
            let _ = self.sync_once().await;
        }
        self.save_baseline_if_due(true);
    }

    /// One round: pull the fleet's changes, push the host's, write the
    /// file. Returns the identities unlocked here.
    pub async fn sync_once(&mut self) -> Result<Vec<String>, String> {
        let epoch = self.epoch().await?;
        if epoch != self.baseline.epoch {
            if self.baseline.epoch.is_some() || !self.baseline.locks.is_empty() {
                warn!(
                    "the fleet's lock list on Redis is new or was emptied (epoch changed): offering it every lock of this host"
                );
            }
            self.baseline = Baseline {
                epoch: epoch.clone(),
                locks: HashMap::new(),
            };
            self.full = true;
        }
        let (fleet, candidates) = if self.full {
            self.pull_all().await?
        } else {
            self.pull_changes().await?
        };
        let local_version = self.locks.version();
        let local: HashMap<String, Value> =
            if self.full || self.local_version != Some(local_version) || !candidates.is_empty() {
                self.local_values()
            } else {
                return Ok(Vec::new());
            };
        let mut ids: BTreeSet<String> = candidates;
        ids.extend(
            local
                .keys()
                .filter(|id| self.baseline.locks.get(*id) != local.get(*id))
                .cloned(),
        );
        ids.extend(
            self.baseline
                .locks
                .keys()
                .filter(|id| !local.contains_key(*id))
                .cloned(),
        );
        let unlocked = self.merge(&ids, &local, &fleet).await?;
        self.full = false;
        // The version read before the list: a lock set while this round ran
        // moves it on, and the next round compares again. (Our own writes
        // move it too, which costs one comparison that finds nothing.)
        self.local_version = Some(local_version);
        Ok(unlocked)
    }

    /// The host's list as the fleet stores it. An entry is encoded once:
    /// in a lock storm the list is compared every round, and most of it
    /// is the same entries as last time (the same `Arc`).
    fn local_values(&mut self) -> HashMap<String, Value> {
        let entries = self.locks.entries();
        let mut cache = HashMap::with_capacity(entries.len());
        let local = entries
            .into_iter()
            .map(|e| {
                let value = match self.encoded.remove(&e.identity) {
                    Some((was, value)) if Arc::ptr_eq(&was, &e) => value,
                    _ => encode(&e),
                };
                cache.insert(e.identity.clone(), (e.clone(), value.clone()));
                (e.identity.clone(), value)
            })
            .collect();
        self.encoded = cache;
        local
    }

    async fn epoch(&self) -> Result<Option<String>, String> {
        let key = self.epoch_key.clone();
        let fresh = format!("{:x}-{}", millis(SystemTime::now()), std::process::id());
        self.link
            .run(SYNC_TIMEOUT, |mut conn| async move {
                let epoch: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                if epoch.is_some() {
                    return Ok(epoch);
                }
                // SET NX: the first host after an empty start names the epoch.
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The whole fleet list, and where the log stands.
    async fn pull_all(&mut self) -> Result<(HashMap<String, Option<Value>>, BTreeSet<String>), String> {
        let (log, entries, version) = (self.log_key.clone(), self.entries_key.clone(), self.version_key.clone());
        let (last, all, v): FullRead = self
            .link
            .run(SYNC_TIMEOUT, |mut conn| async move {
                // The log's end first: changes made meanwhile are read again
                // from the log, which is harmless.
                redis::pipe()
                    .cmd("XREVRANGE")
                    .arg(&log)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("HGETALL")
                    .arg(&entries)
                    .cmd("GET")
                    .arg(&version)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        match last.into_iter().next() {
            Some((id, fields)) => {
                self.last_id = id;
                self.seen_version = fields.get("v").and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            None => {
                self.last_id = "0-0".into();
                self.seen_version = v.unwrap_or(0);
            }
        }
        let candidates: BTreeSet<String> = all.keys().chain(self.baseline.locks.keys()).cloned().collect();
        let mut fleet: HashMap<String, Option<Value>> = candidates.iter().map(|id| (id.clone(), None)).collect();
        for (id, value) in all {
            fleet.insert(id, Some(value));
        }
        Ok((fleet, candidates))
    }

    /// The identities changed in the fleet since the last round, with their
    /// values now.
    async fn pull_changes(&mut self) -> Result<(HashMap<String, Option<Value>>, BTreeSet<String>), String> {
        let (log, last_id) = (self.log_key.clone(), self.last_id.clone());
        type Read = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
        let read: Read = self
            .link
            .run(SYNC_TIMEOUT, |mut conn| async move {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&log)
                    .arg(&last_id)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        let events: Vec<(String, HashMap<String, String>)> = read.into_iter().flatten().flat_map(|(_, e)| e).collect();
        let mut ids = BTreeSet::new();
        for (id, fields) in &events {
            let v: u64 = fields.get("v").and_then(|v| v.parse().ok()).unwrap_or(0);
            if v > self.seen_version + 1 {
                // Changes were trimmed from the log before this host read
                // them: compare the whole list.
                warn!(
                    missed = v - self.seen_version - 1,
                    "lock sync fell behind the fleet's log: comparing the whole list"
                );
                return self.pull_all().await;
            }
            self.seen_version = self.seen_version.max(v);
            self.last_id = id.clone();
            if let Some(identity) = fields.get("id") {
                ids.insert(identity.clone());
            }
        }
        if ids.is_empty() {
            return Ok((HashMap::new(), ids));
        }
        let entries = self.entries_key.clone();
        let wanted: Vec<String> = ids.iter().cloned().collect();
        let values: Vec<Option<String>> = self
            .link
            .run(SYNC_TIMEOUT, |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&entries)
                    .arg(&wanted)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        let fleet = ids.iter().cloned().zip(values).collect();
        Ok((fleet, ids))
    }

    /// The three-way merge of `ids`: pushes what changed here, takes what
    /// changed in the fleet, writes the file, moves the baseline.
    async fn merge(
        &mut self,
        ids: &BTreeSet<String>,
        local: &HashMap<String, Value>,
        fleet: &HashMap<String, Option<Value>>,
    ) -> Result<Vec<String>, String> {
        let pushes: Vec<(&String, Option<&Value>)> = ids
            .iter()
            .filter(|id| local.get(*id) != self.baseline.locks.get(*id))
            .map(|id| (id, local.get(id)))
            .collect();
        let mut outcome: HashMap<String, Option<Value>> = HashMap::new();
        for chunk in pushes.chunks(BATCH) {
            let mut inv = self.script.prepare_invoke();
            inv.key(&self.entries_key)
                .key(&self.log_key)
                .key(&self.version_key)
                .arg(&self.host);
            for (id, value) in chunk {
                match value {
                    Some(v) => inv.arg("put").arg(id.as_str()).arg(locked_at_of(v)).arg(v.as_str()),
                    None => {
                        let seen = self.baseline.locks.get(*id).map_or(0, |b| locked_at_of(b));
                        inv.arg("unlock").arg(id.as_str()).arg(seen).arg("")
                    }
                };
            }
            let results: Vec<Option<String>> = self
                .link
                .run(
                    SYNC_TIMEOUT,
                    |mut conn| async move { inv.invoke_async(&mut conn).await },
                )
                .await
                .map_err(|e| e.to_string())?;
            for ((id, _), result) in chunk.iter().zip(results) {
                outcome.insert((*id).clone(), result);
            }
            self.stats()
                .locks_pushed
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let mut apply = Vec::new();
        let mut moved = false;
        // The baseline of what is applied, as it was: put back if the file
        // cannot be written.
        let mut agreed_before: Vec<(String, Option<Value>)> = Vec::new();
        for id in ids {
            let fleet_now = match outcome.remove(id) {
                Some(v) => v,
                None => match fleet.get(id) {
                    Some(v) => v.clone(),
                    None => self.baseline.locks.get(id).cloned(),
                },
            };
            if fleet_now.as_ref() != local.get(id) {
                let entry = match &fleet_now {
                    Some(v) => match decode(v) {
                        // Held to the rules of this host's lock list, so
                        // that the entry cannot make the file invalid.
                        Some(e) => match self.locks.normalise(&e.identity) {
                            Ok(kept) if kept == e.identity && kept == *id => Some(e),
                            Ok(kept) => {
                                warn!(identity = %id, "the fleet's lock entry names {kept:?} here; keeping this host's");
                                continue;
                            }
                            Err(why) => {
                                warn!(identity = %id, "the fleet's lock entry is refused: {why}; keeping this host's");
                                continue;
                            }
                        },
                        None => {
                            warn!(identity = %id, "the fleet's lock entry does not parse; keeping this host's");
                            continue;
                        }
                    },
                    None => None,
                };
                apply.push((id.clone(), entry));
                agreed_before.push((id.clone(), self.baseline.locks.get(id).cloned()));
            }
            moved |= self.baseline.locks.get(id) != fleet_now.as_ref();
            match fleet_now {
                Some(v) => self.baseline.locks.insert(id.clone(), v),
                None => self.baseline.locks.remove(id),
            };
        }
        let mut unlocked = Vec::new();
        if !apply.is_empty() {
            // Lifted: in force here now, and removed or lapsed in the fleet
            // (an unlock from the review desk keeps the entry, expired).
            let now = SystemTime::now();
            let lifted: Vec<String> = apply
                .iter()
                .filter(|(id, e)| e.as_ref().is_none_or(|e| !e.is_active(now)) && self.locks.lookup(id, now).is_some())
                .map(|(id, _)| id.clone())
                .collect();
            if !lifted.is_empty() {
                (self.forget)(lifted).await;
            }
            let locks = self.locks.clone();
            let changes = apply.clone();
            let written = tokio::task::spawn_blocking(move || locks.apply_fleet(&changes))
                .await
                .map_err(|e| e.to_string())?;
            match written {
                Ok(ids) => unlocked = ids,
                Err(e) => {
                    // The file is this host's view and its agreement with
                    // the fleet: until it can be written, the baseline stays
                    // what the file says, and the fleet's changes are taken
                    // again (a full comparison, once a second at most).
                    for (id, value) in agreed_before {
                        match value {
                            Some(v) => self.baseline.locks.insert(id, v),
                            None => self.baseline.locks.remove(&id),
                        };
                    }
                    self.full = true;
                    self.pause_until = Some(std::time::Instant::now() + WRITE_FAILED_PAUSE);
                    warn!(
                        file = %self.locks.path().display(),
                        changes = apply.len(),
                        "the fleet's lock changes cannot be written to the lock list, retrying in 1s (locks set here are still enforced and shared): {e}"
                    );
                    return Err(format!("cannot write the fleet's lock changes to the lock list: {e}"));
                }
            }
            self.stats()
                .locks_pulled
                .fetch_add(apply.len() as u64, Ordering::Relaxed);
            let (locked, lifted): (Vec<_>, Vec<_>) = apply.iter().partition(|(_, e)| e.is_some());
            info!(
                locked = locked.len(),
                unlocked = lifted.len(),
                first = %apply.first().map_or("", |(id, _)| id.as_str()),
                "lock list updated from the fleet"
            );
        }
        if moved {
            self.baseline_dirty = true;
            self.save_baseline_if_due(false);
        }
        Ok(unlocked)
    }

    /// Saves the baseline at most every [`BASELINE_SAVE_INTERVAL`] (or
    /// now, at a stop). A baseline a little behind is harmless: the changes
    /// it misses are offered to the fleet again at the next start, where the
    /// merge finds them already there.
    fn save_baseline_if_due(&mut self, now: bool) {
        let due = self
            .baseline_saved
            .is_none_or(|t| t.elapsed() >= BASELINE_SAVE_INTERVAL);
        if self.baseline_dirty && (now || due) {
            self.save_baseline();
            self.baseline_dirty = false;
            self.baseline_saved = Some(std::time::Instant::now());
        }
    }

    fn save_baseline(&self) {
        let tmp = self.baseline_path.with_extension("fleet.tmp");
        let result = serde_json::to_vec(&self.baseline)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.baseline_path));
        if let Err(e) = result {
            warn!(file = %self.baseline_path.display(), "cannot save the fleet baseline (after a restart, this host's locks are offered to the fleet again): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::file::{LockSource, Timestamp};

    #[test]
    fn an_entry_read_back_encodes_to_the_same_value() {
        let entry = LockEntry {
            identity: "mallory@example.com".into(),
            source: LockSource::Auto,
            // A lock set just now: sub-second precision.
            locked_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_638_338_123)),
            reason: "rule \"lock\" exceeded".into(),
            rule: Some("lock".into()),
            previous_locks: 2,
            expires_at: Some(Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_724_738_456),
            )),
            note: Some("n".into()),
            history: Vec::new(),
        };
        let value = encode(&entry);
        assert!(value.starts_with("1764638338000 "), "{value}");
        let back = decode(&value).expect("decodes");
        assert_eq!(encode(&back), value);
        assert_eq!(locked_at_of(&value), 1_764_638_338_000);
    }
}
