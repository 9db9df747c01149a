// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Secrets the configuration names by file (`status.proxy_secret_file`):
//! read at start and at each reload, refused when other users of the host
//! may read or change them, and never shown: a [`Secret`]'s `Debug` is
//! masked and it has no `Display`.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The fewest characters a secret may have: 32 hex digits are 128 bits,
/// beyond guessing through a listener that answers each guess with 401.
pub const MIN_SECRET_LEN: usize = 32;
/// The most read: a secret travels in an HTTP header.
pub const MAX_SECRET_LEN: usize = 1024;

/// A secret read from a file. Compare it with
/// `ops::auth::same_secret`, in time independent of where it differs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the comparison; never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<masked>)")
    }
}

/// Reads a secret: a regular file without permissions for other users,
/// holding at least [`MIN_SECRET_LEN`] printable ASCII characters without
/// blanks (trailing line ends are dropped). Every error names the file
/// and says what to do.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{shown} has permissions for other users (mode {mode:04o}): a secret other users of this host can read protects nothing; \
             chown root:egress-milter {shown} && chmod 0640 {shown}"
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not text"))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    let make = format!("make one with: (umask 027; openssl rand -hex 32 > {shown})");
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{shown}: the secret must be printable ASCII without blanks (a proxy sends it in an HTTP header); {make}"
        ));
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{shown} holds {} characters: a secret needs at least {MIN_SECRET_LEN}; {make}",
            secret.len()
        ));
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(format!("{shown} holds more than {MAX_SECRET_LEN} characters; {make}"));
    }
    Ok(Secret(secret.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("proxy.secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_of_enough_characters_is_read_without_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "0123456789abcdef".repeat(4);
        for (text, mode) in [
            (format!("{hex}\n"), 0o640),
            (format!("{hex}\r\n"), 0o600),
            (hex.clone(), 0o400),
        ] {
            let path = secret_file(dir.path(), &text, mode);
            assert_eq!(read_secret_file(&path).unwrap().expose(), hex);
        }
        let s = read_secret_file(&secret_file(dir.path(), &hex, 0o600)).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<masked>)");
    }

    #[test]
    fn files_others_may_use_and_weak_secrets_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "0123456789abcdef".repeat(4);
        for mode in [0o644, 0o604, 0o602, 0o601, 0o666] {
            let path = secret_file(dir.path(), &hex, mode);
            let e = read_secret_file(&path).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "{} has permissions for other users (mode {mode:04o})",
                    path.display()
                )),
                "{e}"
            );
        }
        let path = secret_file(dir.path(), "short\n", 0o640);
        let e = read_secret_file(&path).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{} holds 5 characters: a secret needs at least 32",
                path.display()
            )),
            "{e}"
        );
        let path = secret_file(dir.path(), &format!("{hex} {hex}\n"), 0o640);
        assert!(read_secret_file(&path).unwrap_err().contains("without blanks"));
        let path = secret_file(dir.path(), &"x".repeat(MAX_SECRET_LEN + 1), 0o640);
        assert!(read_secret_file(&path).unwrap_err().contains("more than 1024"));
        let e = read_secret_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("cannot read ") && e.contains("missing"), "{e}");
        assert!(read_secret_file(dir.path()).is_err(), "a directory");
    }
}
