// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The memory backend's state file (`store.state_file`): read at start,
//! with a bound on its size, and replaced atomically at a clean stop. Only
//! bytes here; their format is [`crate::policy::saved`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The largest state file read (or written): 1 GiB, about 27 million
/// buckets of 40 bytes, e.g. the default cap of a million identities in
/// each of 25 rules. A larger file was not written by a daemon that could
/// hold it in memory, so reading it would only spend the start.
pub const MAX_BYTES: u64 = 1 << 30;

/// Mode of the file: it holds the identity hash's key (with which the
/// buckets of chosen identities could be aimed at one shard of the
/// maps), so for the daemon's user only.
pub const MODE: u32 = 0o600;

/// The bytes of the state file at `path`; `None` if there is none (a
/// first start, or one after a crash that came before any clean stop).
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_BYTES {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // It may grow while read: never past the bound.
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

fn too_large(len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{len} bytes, more than the {MAX_BYTES} a state file may have"),
    )
}

/// Replaces the file at `path` with `bytes`, mode [`MODE`]: a temporary
/// file beside it, fsync, rename, fsync of the directory. A stop that is
/// cut short leaves the old file or the new one, never a mix.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() as u64 > MAX_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    let dir = directory(path);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .open(&tmp)?;
        // A temporary file left by an earlier process of the same id kept
        // its mode; so may have an existing one.
        file.set_permissions(fs::Permissions::from_mode(MODE))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether a file can be created in the directory of `path`, for a
/// warning at start rather than a failed save at the stop.
pub fn check_writable(path: &Path) -> io::Result<()> {
    let probe = directory(path).join(format!(".egress-milter-state-probe.{}", std::process::id()));
    OpenOptions::new().write(true).create_new(true).open(&probe)?;
    fs::remove_file(&probe)
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn written_atomically_for_the_daemon_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.state");
        assert_eq!(read(&path).unwrap(), None, "no file: nothing to restore");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, b"new bytes").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"new bytes"[..]));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, MODE);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["counters.state"], "no temporary file left");
        check_writable(&path).unwrap();
        assert!(check_writable(&dir.path().join("missing/counters.state")).is_err());
        assert!(write(&dir.path().join("missing/counters.state"), b"x").is_err());
    }

    #[test]
    fn a_file_past_the_bound_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.state");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_BYTES + 1).unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("more than the 1073741824"), "{e}");
        assert!(read(dir.path()).is_err(), "a directory is no state file");
    }
}
