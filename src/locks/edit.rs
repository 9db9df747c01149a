// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The admin actions on the lock list, the same for the CLI (which edits the
//! file through `lockfile::update`) and the review desk (which does the same
//! from the daemon): lock, unlock, extend, record a counter reset, and bulk
//! unlock by filter. Each records who, when and why in the lock's history.
//!
//! An unlock keeps the entry, lapsed (`expires_at` = now), so that its
//! history and its count of earlier locks stay for the next review; the
//! daemon treats a lapsed entry as no lock, and the next lock of the
//! identity replaces it and counts one more earlier lock.

use super::file::{HistoryEvent, LockEntry, LockList, LockSource, Timestamp};
use super::pattern::Filter;
use std::time::{Duration, SystemTime};

/// Who did it and why, for the history and the log.
#[derive(Clone, Debug)]
pub struct Actor {
    pub by: String,
    pub reason: String,
}

impl Actor {
    /// Checks that there is a reason: every action asks for one.
    pub fn new(by: impl Into<String>, reason: &str) -> Result<Actor, String> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err("give a reason: it is kept in the lock's history".into());
        }
        if reason.len() > 1000 {
            return Err("the reason is too long (at most 1000 bytes)".into());
        }
        Ok(Actor {
            by: by.into(),
            reason: reason.to_string(),
        })
    }

    fn event(&self, action: &str, now: SystemTime, detail: Option<String>) -> HistoryEvent {
        HistoryEvent {
            at: Timestamp(now),
            action: action.into(),
            by: self.by.clone(),
            reason: self.reason.clone(),
            detail,
        }
    }
}

fn expiry(expires: Option<Duration>, now: SystemTime) -> Option<Timestamp> {
    expires.map(|d| Timestamp(now + d))
}

fn describe(expires: Option<Timestamp>) -> String {
    expires.map_or("expires never".into(), |t| format!("expires {t}"))
}

/// Locks `id`; an entry that lapsed is replaced, its history and count of
/// earlier locks carried on.
pub fn lock(
    list: &mut LockList,
    id: &str,
    actor: &Actor,
    expires: Option<Duration>,
    note: Option<String>,
    now: SystemTime,
) -> Result<LockEntry, String> {
    let expires_at = expiry(expires, now);
    let (previous_locks, mut history) = match list.get(id) {
        Some(e) if e.is_active(now) => {
            return Err(format!("{id} is already locked since {} ({})", e.locked_at, e.reason));
        }
        Some(e) => (e.previous_locks + 1, e.history.clone()),
        None => (0, Vec::new()),
    };
    history.push(actor.event("lock", now, Some(describe(expires_at))));
    let mut entry = LockEntry {
        identity: id.to_string(),
        source: LockSource::Manual,
        locked_at: Timestamp(now),
        reason: actor.reason.clone(),
        rule: None,
        previous_locks,
        expires_at,
        note,
        history: Vec::new(),
    };
    for h in history {
        entry.record(h);
    }
    list.upsert(entry.clone());
    Ok(entry)
}

fn active_mut<'a>(list: &'a mut LockList, id: &str, now: SystemTime) -> Result<&'a mut LockEntry, String> {
    match list.entries.iter_mut().find(|e| e.identity == id) {
        Some(e) if e.is_active(now) => Ok(e),
        Some(e) => Err(format!(
            "{id} is not locked (its lock lapsed at {})",
            e.expires_at.map_or_else(|| "?".into(), |t| t.to_string())
        )),
        None => Err(format!("{id} is not in the lock list")),
    }
}

/// Unlocks `id`: the entry lapses now and keeps its history.
pub fn unlock(list: &mut LockList, id: &str, actor: &Actor, now: SystemTime) -> Result<LockEntry, String> {
    let e = active_mut(list, id, now)?;
    let before = e.clone();
    e.expires_at = Some(Timestamp(now));
    e.record(actor.event("unlock", now, None));
    Ok(before)
}

/// Moves the expiry of `id`'s lock to `expires` from now (`None`: never).
pub fn extend(
    list: &mut LockList,
    id: &str,
    actor: &Actor,
    expires: Option<Duration>,
    now: SystemTime,
) -> Result<LockEntry, String> {
    let e = active_mut(list, id, now)?;
    let expires_at = expiry(expires, now);
    e.expires_at = expires_at;
    e.record(actor.event("extend", now, Some(describe(expires_at))));
    Ok(e.clone())
}

/// Records a counter reset in `id`'s entry, if it has one (a reset does not
/// touch the lock). Returns whether there was an entry.
pub fn record_reset(list: &mut LockList, id: &str, actor: &Actor, now: SystemTime) -> bool {
    match list.entries.iter_mut().find(|e| e.identity == id) {
        Some(e) => {
            e.record(actor.event("reset", now, Some("counters cleared".into())));
            true
        }
        None => false,
    }
}

/// The locks in force that `filter` matches, in the list's order.
pub fn matching<'a>(list: &'a LockList, filter: &Filter, now: SystemTime) -> Vec<&'a LockEntry> {
    list.entries.iter().filter(|e| filter.matches(e, now)).collect()
}

/// Unlocks every lock in force that `filter` matches (or, with `dry_run`,
/// only says which). An empty filter is refused unless `all`. Returns the
/// entries as they were before.
pub fn bulk_unlock(
    list: &mut LockList,
    filter: &Filter,
    all: bool,
    actor: &Actor,
    dry_run: bool,
    now: SystemTime,
) -> Result<Vec<LockEntry>, String> {
    if filter.is_empty() && !all {
        return Err(
            "no filter given: name a source, rule, since or identity pattern (or say all, to release every lock)"
                .into(),
        );
    }
    let mut out = Vec::new();
    for e in list.entries.iter_mut().filter(|e| filter.matches(e, now)) {
        out.push(e.clone());
        if !dry_run {
            e.expires_at = Some(Timestamp(now));
            e.record(actor.event("unlock", now, Some("bulk unlock".into())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor::new("alice", "false positive").unwrap()
    }

    fn list_of(ids: &[(&str, &str)], now: SystemTime) -> LockList {
        let mut list = LockList::default();
        for (id, rule) in ids {
            list.entries.push(LockEntry {
                identity: id.to_string(),
                source: LockSource::Auto,
                locked_at: Timestamp(now - Duration::from_secs(60)),
                reason: "r".into(),
                rule: Some(rule.to_string()),
                previous_locks: 0,
                expires_at: None,
                note: None,
                history: Vec::new(),
            });
        }
        list
    }

    #[test]
    fn unlock_keeps_the_history_and_the_next_lock_counts_it() {
        // Whole seconds, as the file keeps them.
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let mut list = list_of(&[("a@x", "r1")], now);
        assert!(Actor::new("alice", "  ").is_err(), "a reason is required");
        unlock(&mut list, "a@x", &actor(), now).unwrap();
        let e = list.get("a@x").unwrap();
        assert!(!e.is_active(now));
        assert_eq!(e.history[0].action, "unlock");
        assert_eq!(e.history[0].by, "alice");
        assert!(unlock(&mut list, "a@x", &actor(), now).is_err(), "not locked any more");
        let later = now + Duration::from_secs(5);
        let e = lock(&mut list, "a@x", &actor(), Some(Duration::from_secs(3600)), None, later).unwrap();
        assert_eq!(e.previous_locks, 1);
        assert_eq!(e.history.len(), 2);
        assert!(
            lock(&mut list, "a@x", &actor(), None, None, later).is_err(),
            "already locked"
        );
        let e = extend(&mut list, "a@x", &actor(), None, later).unwrap();
        assert_eq!(e.expires_at, None);
        assert_eq!(e.history.last().unwrap().action, "extend");
        // Survives the file format.
        let text = list.to_toml();
        let back = LockList::parse(&text, std::path::Path::new("x"), |s| Ok(s.to_string())).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn bulk_unlock_by_rule_with_a_dry_run() {
        let now = SystemTime::now();
        let mut list = list_of(&[("a@x", "bad"), ("b@x", "good"), ("c@y", "bad")], now);
        let filter = Filter {
            rule: Some("bad".into()),
            ..Filter::default()
        };
        let dry = bulk_unlock(&mut list, &filter, false, &actor(), true, now).unwrap();
        assert_eq!(
            dry.iter().map(|e| e.identity.as_str()).collect::<Vec<_>>(),
            ["a@x", "c@y"]
        );
        assert!(list.entries.iter().all(|e| e.is_active(now)), "dry run changes nothing");
        let done = bulk_unlock(&mut list, &filter, false, &actor(), false, now).unwrap();
        assert_eq!(done.len(), 2);
        assert!(list.get("b@x").unwrap().is_active(now));
        assert!(!list.get("a@x").unwrap().is_active(now));
        assert!(bulk_unlock(&mut list, &Filter::default(), false, &actor(), true, now).is_err());
    }
}
