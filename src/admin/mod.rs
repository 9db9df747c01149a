// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The admin commands: `check-config` and `locks list|show|add|remove`.
//! They work on the files, so they work whether the daemon runs or not; a
//! running daemon picks up their changes within its poll interval.

pub mod client;
pub mod output;
pub mod queue;

use crate::config::{Config, format_duration};
use crate::locks::edit::{self, Actor};
use crate::locks::file::check_lock_dir;
use crate::locks::file::{self as lockfile, LockEntry, LockList};
use crate::locks::lock_normaliser;
use crate::locks::pattern::normalise_target;
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
    normalise_target(&config.identity, identity).map_err(Failure::new)
}

/// Who runs the CLI, for the lock's history: `SUDO_USER` or `USER`.
pub fn actor_name() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| format!("uid{}", rustix::process::getuid().as_raw()))
}

fn cli_actor(reason: &str) -> Result<Actor, Failure> {
    Actor::new(format!("local:{}", actor_name()), reason).map_err(|e| Failure::new(format!("{e} (--reason)")))
}

/// Applies `change` to the lock list under the writers' lock; its error,
/// if any, is the command's.
fn edit_list<T>(config: &Config, change: impl FnOnce(&mut LockList) -> Result<T, String>) -> Result<T, Failure> {
    let mut outcome = None;
    lockfile::update(&config.locks.file, &*lock_normaliser(config), |list| {
        let r = change(list);
        let changed = r.is_ok();
        outcome = Some(r);
        changed
    })
    .map_err(Failure::from)?;
    outcome
        .unwrap_or_else(|| Err("the lock list was not changed".into()))
        .map_err(Failure::new)
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
    let actor = cli_actor(reason)?;
    let now = SystemTime::now();
    edit_list(config, |list| edit::lock(list, &id, &actor, expires, note, now))?;
    Ok(format!(
        "locked {id}{}\n",
        expires.map_or(String::new(), |d| format!(" for {}", format_duration(d)))
    ))
}

/// `locks unlock ID --reason TEXT`: the lock lapses now and keeps its
/// history (`locks remove` deletes the entry instead).
pub fn unlock(config: &Config, identity: &str, reason: &str) -> Result<String, Failure> {
    let id = normalise(config, identity)?;
    let actor = cli_actor(reason)?;
    let e = edit_list(config, |list| edit::unlock(list, &id, &actor, SystemTime::now()))?;
    Ok(format!("unlocked {id} (locked since {}: {})\n", e.locked_at, e.reason))
}

/// `locks extend ID --expires DURATION|never --reason TEXT`.
pub fn extend(config: &Config, identity: &str, expires: &str, reason: &str) -> Result<String, Failure> {
    let id = normalise(config, identity)?;
    let actor = cli_actor(reason)?;
    let expires = match expires.trim() {
        "never" => None,
        s => Some(
            s.parse::<crate::config::DurationValue>()
                .map_err(|e| Failure::new(format!("--expires \"{s}\": {e} (write e.g. 24h, 7d or never)")))?
                .0,
        ),
    };
    let e = edit_list(config, |list| {
        edit::extend(list, &id, &actor, expires, SystemTime::now())
    })?;
    Ok(format!(
        "{id} now {}\n",
        e.expires_at
            .map_or("stays locked until unlocked".into(), |t| format!("expires {t}"))
    ))
}

/// `locks unlock-matching FILTER --reason TEXT [--dry-run]`.
pub fn unlock_matching(
    config: &Config,
    filter: &crate::ops::api::FilterRequest,
    all: bool,
    reason: &str,
    dry_run: bool,
) -> Result<String, Failure> {
    let actor = cli_actor(reason)?;
    let now = SystemTime::now();
    let filter = crate::ops::desk::filter_of(filter, now).map_err(Failure::new)?;
    let matched = if dry_run {
        let list = read_list(config)?;
        let mut list = list;
        edit::bulk_unlock(&mut list, &filter, all, &actor, true, now).map_err(Failure::new)?
    } else {
        edit_list(config, |list| edit::bulk_unlock(list, &filter, all, &actor, false, now))?
    };
    let mut out = String::new();
    for e in &matched {
        let _ = writeln!(
            out,
            "{}{}  (locked {} by {}: {})",
            if dry_run { "would unlock " } else { "unlocked " },
            e.identity,
            e.locked_at,
            e.rule.as_deref().unwrap_or(&e.source.to_string()),
            e.reason
        );
    }
    let _ = writeln!(
        out,
        "{} lock(s) {}",
        matched.len(),
        if dry_run {
            "would be unlocked [dry run, nothing changed]"
        } else {
            "unlocked"
        }
    );
    Ok(out)
}

/// `passwd USER`: reads a password from standard input and prints the line
/// for `status.users_file`.
pub fn passwd(user: &str) -> Result<String, Failure> {
    if user.is_empty() || user.len() > 64 || !user.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(Failure::new(
            "a user name is 1 to 64 printable characters without spaces or ':'",
        ));
    }
    let password = read_password()?;
    if password.chars().count() < 8 {
        return Err(Failure::new("the password must have at least 8 characters"));
    }
    let hash = crate::ops::auth::hash_password(&password).map_err(Failure::new)?;
    Ok(format!("{user}:{hash}\n"))
}

/// One line from standard input; on a terminal, asked for without echo.
fn read_password() -> Result<String, Failure> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
        output::eprint("password: ");
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, t);
        output::eprint("\n");
    }
    read.map_err(|e| Failure::new(format!("cannot read the password from standard input: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
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
