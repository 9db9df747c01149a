// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The admin commands: `check-config` and `locks list|show|add|remove`.
//! They work on the files, so they work whether the daemon runs or not; a
//! running daemon picks up their changes within its poll interval.

pub mod client;
pub mod queue;

use crate::config::{Config, format_duration};
use crate::locks::file::check_lock_dir;
use crate::locks::file::{self as lockfile, LockEntry, LockList, LockSource, Timestamp};
use crate::locks::lock_normaliser;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// An admin command's failure: the message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub status: i32,
}

/// Exit status for an unusable configuration or lock list (sysexits EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: 1,
        }
    }
}

impl From<lockfile::LockFileError> for Failure {
    /// A lock list that does not parse is unusable (78); an I/O error is not.
    fn from(e: lockfile::LockFileError) -> Self {
        let status = match e {
            lockfile::LockFileError::Corrupt { .. } => EXIT_CONFIG,
            lockfile::LockFileError::Io { .. } => 1,
        };
        Self {
            message: e.to_string(),
            status,
        }
    }
}

/// `check-config`: the configuration and the lock list it names.
pub fn check_config(config: &Config, path: &std::path::Path) -> Result<String, Failure> {
    let mut out = String::new();
    let _ = writeln!(out, "{}: configuration is valid", path.display());
    for w in config.warnings() {
        let _ = writeln!(out, "warning: {w}");
    }
    let list = LockList::read(&config.locks.file, &*lock_normaliser(config)).map_err(Failure::from)?;
    let _ = writeln!(
        out,
        "{}: lock list is valid ({} entries)",
        config.locks.file.display(),
        list.entries.len()
    );
    // Checks only: creating the directory or the guard file here, perhaps
    // as root, could leave files the daemon's user cannot write.
    if let Err(e) = check_lock_dir(&config.locks.file, false) {
        let _ = writeln!(out, "warning: {e}");
    }
    Ok(out)
}

fn normalise(config: &Config, identity: &str) -> Result<String, Failure> {
    crate::config::address::normalise_address(&config.identity, identity.as_bytes())
        .map_err(|e| Failure::new(format!("\"{identity}\" is not a valid identity: {e}")))
}

fn state(entry: &LockEntry, now: SystemTime) -> &'static str {
    if entry.is_active(now) { "locked" } else { "expired" }
}

fn read_list(config: &Config) -> Result<LockList, Failure> {
    LockList::read(&config.locks.file, &*lock_normaliser(config)).map_err(Failure::from)
}

/// `locks list`: a table, newest lock first.
pub fn list(config: &Config) -> Result<String, Failure> {
    let list = read_list(config)?;
    let now = SystemTime::now();
    let mut entries: Vec<_> = list.entries.iter().collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.locked_at));
    let mut rows = vec![[
        "IDENTITY".to_string(),
        "STATE".into(),
        "SINCE".into(),
        "SOURCE".into(),
        "EXPIRES".into(),
        "REASON".into(),
    ]];
    for e in entries {
        rows.push([
            e.identity.clone(),
            state(e, now).into(),
            e.locked_at.to_string(),
            e.source.to_string(),
            e.expires_at.map_or("never".into(), |t| t.to_string()),
            e.reason.clone(),
        ]);
    }
    if rows.len() == 1 {
        return Ok(format!("no locks in {}\n", config.locks.file.display()));
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, width) in widths.iter().enumerate() {
            let _ = write!(out, "{:<width$}  ", row[c]);
        }
        let _ = writeln!(out, "{}", row[5]);
    }
    Ok(out)
}

/// `locks list --json`: every entry, newest first, as a JSON array.
pub fn list_json(config: &Config) -> Result<String, Failure> {
    let list = read_list(config)?;
    let now = SystemTime::now();
    let mut entries: Vec<_> = list.entries.iter().collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.locked_at));
    let views: Vec<_> = entries.iter().map(|e| crate::ops::api::LockView::new(e, now)).collect();
    let mut out = serde_json::to_string_pretty(&views).map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
    out.push('\n');
    Ok(out)
}

/// `locks show ID`.
pub fn show(config: &Config, identity: &str) -> Result<String, Failure> {
    let id = normalise(config, identity)?;
    let list = read_list(config)?;
    let e = list
        .get(&id)
        .ok_or_else(|| Failure::new(format!("{id} is not in the lock list")))?;
    let now = SystemTime::now();
    let mut out = String::new();
    let _ = writeln!(out, "identity:       {}", e.identity);
    let _ = writeln!(out, "state:          {}", state(e, now));
    let _ = writeln!(out, "source:         {}", e.source);
    let when = match now.duration_since(e.locked_at.0) {
        Ok(since) => format!("{} ago", format_duration(since)),
        Err(ahead) => format!("{} in the future: check the clocks", format_duration(ahead.duration())),
    };
    let _ = writeln!(out, "locked at:      {} ({when})", e.locked_at);
    let _ = writeln!(out, "reason:         {}", e.reason);
    if let Some(rule) = &e.rule {
        let _ = writeln!(out, "rule:           {rule}");
    }
    let _ = writeln!(out, "earlier locks:  {}", e.previous_locks);
    let _ = writeln!(
        out,
        "expires:        {}",
        e.expires_at.map_or("never (until removed)".into(), |t| t.to_string())
    );
    if let Some(note) = &e.note {
        let _ = writeln!(out, "note:           {note}");
    }
    Ok(out)
}

/// `locks add ID --reason TEXT [--expires DURATION] [--note TEXT]`.
pub fn add(
    config: &Config,
    identity: &str,
    reason: &str,
    expires: Option<Duration>,
    note: Option<String>,
) -> Result<String, Failure> {
    let id = normalise(config, identity)?;
    if reason.trim().is_empty() {
        return Err(Failure::new("a lock needs a reason (--reason)"));
    }
    let now = SystemTime::now();
    let mut outcome = Ok(());
    lockfile::update(&config.locks.file, &*lock_normaliser(config), |list| {
        let previous = match list.get(&id) {
            Some(e) if e.is_active(now) => {
                outcome = Err(Failure::new(format!(
                    "{id} is already locked since {} ({})",
                    e.locked_at, e.reason
                )));
                return false;
            }
            Some(e) => e.previous_locks + 1,
            None => 0,
        };
        list.upsert(LockEntry {
            identity: id.clone(),
            source: LockSource::Manual,
            locked_at: Timestamp(now),
            reason: reason.trim().to_string(),
            rule: None,
            previous_locks: previous,
            expires_at: expires.map(|d| Timestamp(now + d)),
            note,
        });
        true
    })
    .map_err(Failure::from)?;
    outcome?;
    Ok(format!(
        "locked {id}{}\n",
        expires.map_or(String::new(), |d| format!(" for {}", format_duration(d)))
    ))
}

/// `locks remove ID`.
pub fn remove(config: &Config, identity: &str) -> Result<String, Failure> {
    let id = normalise(config, identity)?;
    let mut removed = None;
    lockfile::update(&config.locks.file, &*lock_normaliser(config), |list| {
        removed = list.remove(&id);
        removed.is_some()
    })
    .map_err(Failure::from)?;
    match removed {
        Some(e) => Ok(format!("unlocked {id} (locked since {}: {})\n", e.locked_at, e.reason)),
        None => Err(Failure::new(format!("{id} is not in the lock list"))),
    }
}
