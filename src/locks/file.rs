// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock list file: its TOML format, strict parsing with line numbers, and
//! atomic read-modify-write shared safely by the daemon and the CLI.
//!
//! Every writer takes an exclusive `flock` on a sidecar file (`<list>.lock`),
//! re-reads the list, applies its change and replaces the file by writing a
//! temporary file, fsyncing it, renaming it over the list and fsyncing the
//! directory. A crash at any point leaves the old or the new list, and two
//! writers never lose each other's entries. A list that does not parse is
//! never overwritten.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Whether a lock was set by the daemon or by an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockSource {
    Auto,
    Manual,
}

impl fmt::Display for LockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockSource::Auto => "auto",
            LockSource::Manual => "manual",
        })
    }
}

/// A point in time written as RFC 3339, e.g. `"2026-11-23T14:07:00Z"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        Timestamp::parse(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid time \"{s}\": {e} (expected RFC 3339, e.g. \"2026-11-23T14:07:00Z\" or \"2026-11-23T15:07:00+01:00\")"
            ))
        })
    }
}

impl Timestamp {
    /// RFC 3339 in UTC (`Z`) or with a numeric offset (`+01:00`, as an
    /// admin in Europe might write by hand); written back in UTC.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let s = s.trim();
        let b = s.as_bytes();
        let offset = b.len().checked_sub(6).filter(|&i| {
            matches!(b[i], b'+' | b'-')
                && b[i + 3] == b':'
                && [1, 2, 4, 5].iter().all(|&k| b[i + k].is_ascii_digit())
                && i > 10
        });
        // No numeric offset: UTC, with or without `Z`.
        let Some(i) = offset else {
            return humantime::parse_rfc3339_weak(s)
                .map(Timestamp)
                .map_err(|e| e.to_string());
        };
        let digits = |k: usize| u64::from(b[k] - b'0') * 10 + u64::from(b[k + 1] - b'0');
        let (hours, minutes) = (digits(i + 1), digits(i + 4));
        if hours > 23 || minutes > 59 {
            return Err(format!("offset {} out of range", &s[i..]));
        }
        let local = humantime::parse_rfc3339_weak(&s[..i]).map_err(|e| e.to_string())?;
        let offset = Duration::from_secs(hours * 3600 + minutes * 60);
        let utc = if b[i] == b'+' {
            local.checked_sub(offset)
        } else {
            local.checked_add(offset)
        };
        utc.map(Timestamp).ok_or_else(|| "time out of range".to_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

/// One locked identity.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The identity as the milter resolves it (login, address or client address).
    pub identity: String,
    pub source: LockSource,
    pub locked_at: Timestamp,
    /// Why: for automatic locks the rule, the count and the window.
    pub reason: String,
    /// The rule that locked it (automatic locks).
    #[serde(default)]
    pub rule: Option<String>,
    /// How many times this identity was locked before this lock.
    #[serde(default)]
    pub previous_locks: u32,
    /// When the lock lifts itself; absent: when an admin removes it.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Free text for admins.
    #[serde(default)]
    pub note: Option<String>,
    /// What admins did to this lock and to the identity's earlier locks:
    /// who, when, why. Absent in files written before it existed, and left
    /// out when empty, so that an entry without history is written (and
    /// sent to the fleet) exactly as older versions write it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEvent>,
}

/// One admin action on a lock, as the lock's history records it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEvent {
    pub at: Timestamp,
    /// `lock`, `unlock`, `extend` or `reset`.
    pub action: String,
    /// Who: a user of the review desk (`alice`), `local:USER` for the CLI.
    pub by: String,
    pub reason: String,
    /// What changed, e.g. `expires 2026-11-24T10:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The most history kept per entry: the oldest events go first, so a lock
/// toggled by a script cannot grow the list without bound.
pub const MAX_HISTORY: usize = 50;

impl LockEntry {
    /// Records an admin action, keeping at most [`MAX_HISTORY`] events.
    pub fn record(&mut self, event: HistoryEvent) {
        self.history.push(event);
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
        }
    }
}

impl LockEntry {
    /// Whether the lock is in force at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| t.0 > now)
    }
}

/// The parsed lock list, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockList {
    pub entries: Vec<LockEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default, rename = "lock")]
    locks: Vec<toml::Spanned<LockEntry>>,
}

/// Why the lock list could not be read or written.
#[derive(Debug)]
pub enum LockFileError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// The file does not parse; it is left untouched.
    Corrupt {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

impl fmt::Display for LockFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockFileError::Io { path, action, source } => {
                write!(f, "{}: cannot {action}: {source}", path.display())
            }
            LockFileError::Corrupt { path, line, message } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ": line {line}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

impl std::error::Error for LockFileError {}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> LockFileError + 'a {
    move |source| LockFileError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

impl LockList {
    /// Parses lock list text. Duplicate identities are an error, so a
    /// half-finished edit is noticed rather than half applied. `normalise`
    /// maps an identity to the form the milter compares, or refuses it with
    /// the reason `locks add` and the review desk give (see
    /// [`crate::locks::lock_normaliser`]): an entry typed by hand is held
    /// to the same rules as one added by them, and an identity refused
    /// makes the file invalid at its line like any other malformed entry.
    pub fn parse(
        text: &str,
        path: &Path,
        normalise: impl Fn(&str) -> Result<String, String>,
    ) -> Result<LockList, LockFileError> {
        let corrupt = |span: Option<std::ops::Range<usize>>, message: String| LockFileError::Corrupt {
            path: path.to_owned(),
            line: span.map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            }),
            message,
        };
        let shape: FileShape = toml::from_str(text).map_err(|e| corrupt(e.span(), e.message().to_string()))?;
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(shape.locks.len());
        for spanned in shape.locks {
            let span = spanned.span();
            let mut entry = spanned.into_inner();
            let key = match normalise(&entry.identity) {
                Ok(key) if !key.is_empty() => key,
                Ok(_) => return Err(corrupt(Some(span), "a lock needs a non-empty identity".into())),
                Err(why) => return Err(corrupt(Some(identity_span(text, span)), why)),
            };
            if !seen.insert(key.clone()) {
                return Err(corrupt(Some(span), format!("identity \"{key}\" is listed twice")));
            }
            entry.identity = key;
            entries.push(entry);
        }
        Ok(LockList { entries })
    }

    /// Reads the list; a missing file is an empty list.
    pub fn read(path: &Path, normalise: impl Fn(&str) -> Result<String, String>) -> Result<LockList, LockFileError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path, normalise),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LockList::default()),
            Err(e) => Err(io_error(path, "read the lock list")(e)),
        }
    }

    pub fn get(&self, identity: &str) -> Option<&LockEntry> {
        self.entries.iter().find(|e| e.identity == identity)
    }

    /// Adds or replaces the entry for `entry.identity`.
    pub fn upsert(&mut self, entry: LockEntry) {
        match self.entries.iter_mut().find(|e| e.identity == entry.identity) {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes an identity's entry; returns it if there was one.
    pub fn remove(&mut self, identity: &str) -> Option<LockEntry> {
        let pos = self.entries.iter().position(|e| e.identity == identity)?;
        Some(self.entries.remove(pos))
    }

    /// The file text: a comment header, then one `[[lock]]` table per entry.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(HEADER);
        out.reserve(self.entries.len() * 320);
        for e in &self.entries {
            push_entry(&mut out, e);
        }
        out
    }
}

/// Where the `identity = ...` line of the entry whose table starts at
/// `table` is, for an error about its value: toml gives the span of the
/// `[[lock]]` header, so the key is looked for below it, up to the next
/// table. The header's span if it is not found (a quoted key, say).
fn identity_span(text: &str, table: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let Some(rest) = text.get(table.start..) else {
        return table;
    };
    let mut offset = table.start;
    for (n, line) in rest.split_inclusive('\n').enumerate() {
        let key = line.trim_start();
        if n > 0 && key.starts_with('[') {
            break;
        }
        if key
            .strip_prefix("identity")
            .is_some_and(|after| after.trim_start().starts_with('='))
        {
            let at = offset + (line.len() - key.len());
            return at..at + 1;
        }
        offset += line.len();
    }
    table
}

/// Appends one entry's `[[lock]]` table. The text of a list is the header
/// followed by its entries' tables, so entries added at the end of a list
/// can be appended to its text (see [`update_cached`]).
fn push_entry(out: &mut String, e: &LockEntry) {
    out.push_str("\n[[lock]]\n");
    push_string(out, "identity", &e.identity);
    push_string(out, "source", &e.source.to_string());
    push_string(out, "locked_at", &e.locked_at.to_string());
    push_string(out, "reason", &e.reason);
    if let Some(rule) = &e.rule {
        push_string(out, "rule", rule);
    }
    out.push_str(&format!("previous_locks = {}\n", e.previous_locks));
    if let Some(t) = &e.expires_at {
        push_string(out, "expires_at", &t.to_string());
    }
    if let Some(note) = &e.note {
        push_string(out, "note", note);
    }
    for h in &e.history {
        out.push_str("[[lock.history]]\n");
        push_string(out, "at", &h.at.to_string());
        push_string(out, "action", &h.action);
        push_string(out, "by", &h.by);
        push_string(out, "reason", &h.reason);
        if let Some(detail) = &h.detail {
            push_string(out, "detail", detail);
        }
    }
}

/// Appends `key = "value"` as a TOML basic string. The daemon rewrites the
/// whole list on every batch of new locks, so this runs for every entry of
/// the file each time: it escapes by hand rather than building a TOML value
/// per field.
fn push_string(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(" = \"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push_str("\"\n");
}

/// What tells one version of the lock list file from another: any writer's
/// rename, or an edit in place, changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    inode: u64,
    len: u64,
    mtime_nanos: i128,
}

impl Fingerprint {
    /// The file's inode: a new one means the file was replaced (renamed over).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether the file was modified less than `d` ago (or in the future).
    pub fn modified_within(&self, d: Duration) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as i128);
        now - self.mtime_nanos < d.as_nanos() as i128
    }
}

/// The file's fingerprint now; `None` if it does not exist.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = fs::metadata(path).ok()?;
    Some(Fingerprint {
        inode: meta.ino(),
        len: meta.len(),
        mtime_nanos: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// The lock list as this process last read or wrote it, with the file's
/// fingerprint at that moment.
#[derive(Debug)]
pub struct Snapshot {
    pub fingerprint: Option<Fingerprint>,
    pub list: LockList,
    /// The text written for `list` ([`LockList::to_toml`]), if this process
    /// wrote it: the daemon writes a batch of new locks several times a
    /// second in a storm, and appending their tables to it costs the batch,
    /// where serialising the whole list again costs the list.
    text: Option<String>,
}

/// What a change to the lock list did (see [`update_cached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: nothing is written.
    None,
    /// Entries were only added at the end.
    Appended,
    /// Anything else (entries replaced, removed or reordered).
    Edited,
}

/// What [`update_cached`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The file was read and parsed (someone else changed it, or there was
    /// no snapshot); otherwise the snapshot stood in for it.
    pub reread: bool,
    /// The file was rewritten.
    pub written: bool,
}

const HEADER: &str = "\
# egress-milter lock list.
#
# Every [[lock]] below refuses (or holds) mail from one identity. This file is
# the single source of truth: the daemon adds automatic locks here and picks up
# your edits within seconds. Delete an entry (or run `egress-milter locks remove
# IDENTITY`) to unlock. If you leave the file unparsable, the daemon keeps the
# last good list in force and logs the line at fault. Format and workflow:
# docs/lock-list.md (installed in /usr/share/doc/egress-milter/).
";

/// The path of the sidecar file writers lock.
pub fn guard_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// Applies `change` to the lock list under the writers' lock and writes the
/// result atomically. Returns the list as written. `change` returning `false`
/// means nothing changed and nothing is written.
pub fn update(
    path: &Path,
    normalise: impl Fn(&str) -> Result<String, String>,
    change: impl FnOnce(&mut LockList) -> bool,
) -> Result<LockList, LockFileError> {
    let mut snapshot = None;
    update_cached(path, normalise, &mut snapshot, |list| {
        if change(list) { Change::Edited } else { Change::None }
    })?;
    Ok(snapshot.map(|s| s.list).unwrap_or_default())
}

/// [`update`] for a long-lived writer: under the writers' lock, the file is
/// read only if its fingerprint differs from `snapshot`'s (another writer or
/// an admin changed it); otherwise the snapshot is the list. On success
/// `snapshot` holds the list as written; on failure it is cleared, so the
/// next update reads the file again. `change` says what it did: after
/// [`Change::Appended`] the text last written is extended rather than
/// rebuilt.
pub fn update_cached(
    path: &Path,
    normalise: impl Fn(&str) -> Result<String, String>,
    snapshot: &mut Option<Snapshot>,
    change: impl FnOnce(&mut LockList) -> Change,
) -> Result<Updated, LockFileError> {
    let guard_path = guard_path(path);
    let previous = snapshot.take();
    let guard = open_guard(&guard_path)?;
    guard.lock().map_err(io_error(&guard_path, "take the writers' lock"))?;
    let now = fingerprint(path);
    let (mut list, text, reread) = match previous {
        Some(s) if s.fingerprint.is_some() && s.fingerprint == now => (s.list, s.text, false),
        _ => (LockList::read(path, normalise)?, None, true),
    };
    let before = list.entries.len();
    let changed = change(&mut list);
    let text = match (changed, text) {
        (Change::None, text) => text,
        (Change::Appended, Some(mut text)) if list.entries.len() >= before => {
            for e in &list.entries[before..] {
                push_entry(&mut text, e);
            }
            debug_assert_eq!(text, list.to_toml(), "Change::Appended for a list edited elsewhere");
            write_atomically(path, text.as_bytes())?;
            Some(text)
        }
        _ => {
            let text = list.to_toml();
            write_atomically(path, text.as_bytes())?;
            Some(text)
        }
    };
    let written = changed != Change::None;
    *snapshot = Some(Snapshot {
        fingerprint: if written { fingerprint(path) } else { now },
        list,
        text,
    });
    // The flock is released when `guard` is closed.
    drop(guard);
    Ok(Updated { reread, written })
}

/// Opens the writers' lock file. flock needs no write access, so an existing
/// guard is opened read-only: one created by root (the CLI run as root)
/// must not lock the daemon's user out. A new one is given the directory's
/// owner, as is the lock list itself (see [`write_atomically`]).
fn open_guard(guard_path: &Path) -> Result<File, LockFileError> {
    match File::open(guard_path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error(guard_path, "open the writers' lock")(e));
        }
        Err(_) => {}
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(guard_path)
        .map_err(io_error(guard_path, "create the writers' lock"))?;
    give_to_directory_owner(guard_path);
    Ok(file)
}

/// Makes a file this process created belong to the owner of its directory.
/// As root (an admin running the CLI) that keeps the lock list writable by
/// the daemon's user; as anyone else it changes nothing.
fn give_to_directory_owner(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(meta) = fs::metadata(dir) {
        let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
    }
}

/// Replaces `path` with `contents`: temp file, fsync, rename, fsync directory.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), LockFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_error(&tmp, "create a temporary lock list"))?;
        // Keep the permissions of the list an admin may have set, and the
        // directory owner's ownership.
        if let Ok(meta) = fs::metadata(path) {
            let _ = file.set_permissions(meta.permissions());
        }
        give_to_directory_owner(&tmp);
        file.write_all(contents)
            .map_err(io_error(&tmp, "write the temporary lock list"))?;
        file.sync_all()
            .map_err(io_error(&tmp, "fsync the temporary lock list"))?;
        fs::rename(&tmp, path).map_err(io_error(path, "rename the temporary lock list into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir, "fsync the lock list directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Checks that the lock list's directory is writable by this process, so a
/// lock set at run time can be persisted. With `create`, a missing directory
/// is created (the daemon at start); without, nothing is left on disk
/// (`check-config`, which an admin may run as root).
pub fn check_lock_dir(path: &Path, create: bool) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        if !create {
            return Err(format!(
                "the lock list's directory ({}) does not exist; the daemon creates it at start if it can",
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the lock list's directory ({}): {e}", dir.display()))?;
    }
    let probe = dir.join(format!(".egress-milter-probe.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&probe)
        .map(drop)
        .map_err(|e| format!("cannot write in the lock list's directory ({}): {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lower(s: &str) -> Result<String, String> {
        Ok(s.trim().to_lowercase())
    }

    fn entry(id: &str) -> LockEntry {
        LockEntry {
            identity: id.into(),
            source: LockSource::Auto,
            locked_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            reason: "rule \"lock-hour\": 151/150 messages in 1h".into(),
            rule: Some("lock-hour".into()),
            previous_locks: 2,
            expires_at: Some(Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_086_400))),
            note: Some("ticket \"#42\"\nsecond line".into()),
            history: Vec::new(),
        }
    }

    #[test]
    fn times_with_an_offset_are_read_as_utc() {
        let utc = Timestamp::parse("2026-11-23T14:07:00Z").unwrap();
        assert_eq!(Timestamp::parse("2026-11-23T15:07:00+01:00"), Ok(utc));
        assert_eq!(Timestamp::parse(" 2026-11-23T09:37:00-04:30 "), Ok(utc));
        assert_eq!(Timestamp::parse("2026-11-23T14:07:00+00:00"), Ok(utc));
        assert_eq!(utc.to_string(), "2026-11-23T14:07:00Z");
        for bad in [
            "2026-11-23T15:07:00+25:00",
            "2026-11-23T15:07:00+01:60",
            "2026-11-23",
            "+01:00",
            "garbage+01:00",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip() {
        let list = LockList {
            entries: vec![entry("alice@example.com"), entry("192.0.2.1")],
        };
        let text = list.to_toml();
        assert!(text.starts_with("# egress-milter lock list."));
        let back = LockList::parse(&text, Path::new("l.toml"), lower).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn an_identity_locks_add_refuses_makes_a_hand_edited_list_invalid_at_its_line() {
        let config = crate::config::Config::default();
        let normalise = crate::locks::lock_normaliser(&config);
        let good = "[[lock]]\nidentity = \"alice@example.com\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\n";
        for bad in [
            "<script>alert(1)</script>",
            "bad user@example.com",
            "a\u{7}@example.com",
            "@",
            "@exa mple.com",
            "10.0.0.0/33",
            "local:",
            &format!("{}@example.com", "x".repeat(300)),
        ] {
            // The identity on line 9, below the table's first key.
            let text = format!(
                "{good}\n[[lock]]\nsource = \"manual\"\nidentity = {}\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\n",
                toml::Value::String(bad.to_string())
            );
            let e = LockList::parse(&text, Path::new("l.toml"), &*normalise).expect_err(bad);
            assert!(matches!(e, LockFileError::Corrupt { .. }), "{bad}: {e}");
            // The words of `locks add` and the desk, one definition.
            let why = crate::locks::pattern::normalise_target(&config.identity, bad).expect_err(bad);
            assert_eq!(e.to_string(), format!("l.toml: line 9: {why}"), "{bad}");
        }
        // What the CLI accepts is accepted, in the form it writes.
        for (raw, kept) in [
            ("<Bob@Example.COM>", "bob@example.com"),
            ("@Example.COM", "@example.com"),
            ("203.0.113.9/24", "203.0.113.0/24"),
            ("local:www-data", "local:www-data"),
        ] {
            let text = format!(
                "{good}\n[[lock]]\nidentity = \"{raw}\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\n"
            );
            let list =
                LockList::parse(&text, Path::new("l.toml"), &*normalise).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(list.entries[1].identity, kept);
        }
    }

    #[test]
    fn hand_written_entries_parse_and_normalise() {
        let text = "[[lock]]\nidentity = \"Bob@Example.COM\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"phishing report\"\n";
        let list = LockList::parse(text, Path::new("l.toml"), lower).unwrap();
        assert_eq!(list.entries[0].identity, "bob@example.com");
        assert_eq!(list.entries[0].previous_locks, 0);
        assert!(list.entries[0].is_active(SystemTime::now()));
    }

    #[test]
    fn errors_name_the_line() {
        let bad_time = "[[lock]]\nidentity = \"a\"\nsource = \"manual\"\nlocked_at = \"yesterday\"\nreason = \"x\"\n";
        let e = LockList::parse(bad_time, Path::new("l.toml"), lower).unwrap_err();
        assert!(e.to_string().starts_with("l.toml: line 4: invalid time"), "{e}");

        let dup = "[[lock]]\nidentity = \"a\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\n\n[[lock]]\nidentity = \"A\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\n";
        let e = LockList::parse(dup, Path::new("l.toml"), lower).unwrap_err();
        assert!(
            e.to_string().contains("line 7") && e.to_string().contains("listed twice"),
            "{e}"
        );

        let half = "[[lock]]\nidentity = \"a\"\nsource = \"manual\n";
        assert!(LockList::parse(half, Path::new("l.toml"), lower).is_err());
        let unknown = "[[lock]]\nidentity = \"a\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"x\"\ncolour = \"red\"\n";
        assert!(LockList::parse(unknown, Path::new("l.toml"), lower).is_err());
    }

    #[test]
    fn expiry() {
        let mut e = entry("a");
        let expires = e.expires_at.unwrap().0;
        assert!(e.is_active(expires - Duration::from_secs(1)));
        assert!(!e.is_active(expires));
        e.expires_at = None;
        assert!(e.is_active(expires + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn update_writes_atomically_and_refuses_to_overwrite_a_corrupt_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let list = update(&path, lower, |l| {
            l.upsert(entry("a"));
            true
        })
        .unwrap();
        assert_eq!(list.entries.len(), 1);
        let list = update(&path, lower, |l| {
            l.upsert(entry("b"));
            true
        })
        .unwrap();
        assert_eq!(list.entries.len(), 2);
        assert_eq!(LockList::read(&path, lower).unwrap(), list);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        fs::write(&path, "[[lock]]\nidentity = ").unwrap();
        let e = update(&path, lower, |l| {
            l.upsert(entry("c"));
            true
        })
        .unwrap_err();
        assert!(matches!(e, LockFileError::Corrupt { .. }));
        assert_eq!(fs::read_to_string(&path).unwrap(), "[[lock]]\nidentity = ");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        update(&path, lower, |l| {
                            l.upsert(entry(&format!("t{t}-{i}")));
                            true
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(LockList::read(&path, lower).unwrap().entries.len(), 200);
    }

    #[test]
    fn any_text_survives_the_hand_written_escaping() {
        let mut e = entry("a@x");
        e.reason = "quote \" backslash \\ tab\t cr\r nl\n nul\u{0} del\u{7f} esc\u{1b} c1\u{85} ünï 🔒".into();
        e.note = Some("\\\"\\".into());
        let list = LockList { entries: vec![e] };
        let text = list.to_toml();
        let parsed = LockList::parse(&text, Path::new("t"), lower).unwrap();
        assert_eq!(parsed, list);
    }

    #[test]
    fn a_long_lived_writer_rereads_only_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let mut snapshot = None;
        let add = |id: &'static str| {
            move |l: &mut LockList| {
                l.upsert(entry(id));
                Change::Appended
            }
        };
        let first = update_cached(&path, lower, &mut snapshot, add("a@x")).unwrap();
        assert_eq!(
            first,
            Updated {
                reread: true,
                written: true
            }
        );
        let second = update_cached(&path, lower, &mut snapshot, add("b@x")).unwrap();
        assert_eq!(
            second,
            Updated {
                reread: false,
                written: true
            }
        );
        // Someone else writes: the next update reads their change.
        update(&path, lower, |l| {
            l.upsert(entry("c@x"));
            true
        })
        .unwrap();
        let third = update_cached(&path, lower, &mut snapshot, add("d@x")).unwrap();
        assert!(third.reread);
        let ids: Vec<_> = LockList::read(&path, lower)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.identity)
            .collect();
        assert_eq!(ids, ["a@x", "b@x", "c@x", "d@x"]);
        // A failed update clears the snapshot, so nothing stale is reused.
        std::fs::write(&path, "[[lock]]\nidentity = ").unwrap();
        assert!(update_cached(&path, lower, &mut snapshot, add("e@x")).is_err());
        assert!(snapshot.is_none());
    }

    #[test]
    fn appended_entries_extend_the_text_last_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.toml");
        let mut snapshot = None;
        let mut expected = LockList::default();
        for i in 0..5 {
            let e = entry(&format!("u{i}@x"));
            expected.entries.push(e.clone());
            update_cached(&path, lower, &mut snapshot, |l| {
                l.entries.push(e);
                Change::Appended
            })
            .unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), expected.to_toml());
        }
        // An edit rebuilds the text; nothing to do writes nothing.
        update_cached(&path, lower, &mut snapshot, |l| {
            l.entries.remove(0);
            Change::Edited
        })
        .unwrap();
        expected.entries.remove(0);
        assert_eq!(fs::read_to_string(&path).unwrap(), expected.to_toml());
        let before = fingerprint(&path);
        let nothing = update_cached(&path, lower, &mut snapshot, |_| Change::None).unwrap();
        assert!(!nothing.written);
        assert_eq!(fingerprint(&path), before);
        assert_eq!(LockList::read(&path, lower).unwrap(), expected);
    }

    #[test]
    fn files_written_as_root_belong_to_the_directory_owner() {
        let dir = tempfile::tempdir().unwrap();
        if std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: needs root to hand the directory to another user");
            return;
        }
        let path = dir.path().join("locks.toml");
        update(&path, lower, |l| {
            l.upsert(entry("a@x"));
            true
        })
        .unwrap();
        for file in [path.clone(), guard_path(&path)] {
            let meta = fs::metadata(&file).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{}", file.display());
        }
        // A guard file the daemon's user cannot write still serves for flock.
        std::fs::set_permissions(guard_path(&path), std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        assert!(open_guard(&guard_path(&path)).is_ok());
    }
}
