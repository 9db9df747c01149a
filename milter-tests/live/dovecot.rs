// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private Dovecot that does nothing but SASL for one Postfix instance
//! (`smtpd_sasl_type = dovecot`), the other SASL backend Postfix sites use.
//! Started by [`crate::postfix::PostfixInstance`] when its options ask for
//! it ([`crate::postfix::PostfixOptions::dovecot_sasl`]); everything lives
//! in the instance's directory:
//!
//! ```text
//! DIR/dovecot/dovecot.conf   written here: no protocol, no SSL, auth only
//! DIR/dovecot/users          passwd-file: `user@domain:{PLAIN}password`
//! DIR/dovecot/run/           base_dir (Dovecot's own sockets, master.pid)
//! DIR/dovecot/state/         state_dir
//! DIR/dovecot/dovecot.log    log_path (auth_debug: every reply to Postfix)
//! DIR/dovecot/stderr         what dovecot says before its log is open
//! DIR/spool/private/auth     the auth socket smtpd talks to (private/auth)
//! ```
//!
//! `dovecot -F -c DIR/dovecot/dovecot.conf` runs as a child of the test
//! (as root; Dovecot switches its auth process to the `dovecot` user and
//! needs the users `dovecot` and `dovenull` that dovecot-core's postinst
//! makes). With `protocols =` empty it listens on no TCP port. Dropping it
//! sends SIGTERM (SIGKILL after a bound) and waits for the master to exit;
//! the directory belongs to the Postfix instance.
//!
//! Logins: the passwd-file holds each user as `user@domain`;
//! `auth_default_realm` appends the realm to a bare login and
//! `auth_username_format = %Lu` lowercases the whole name before the lookup,
//! so `alice`, `alice@example.com` and `ALICE@Example.com` are one entry.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::egress::{poll_until, read_lossy, tail};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

/// Debian's dovecot binary (package dovecot-core).
pub const DOVECOT: &str = "/usr/sbin/dovecot";
/// The users Dovecot 2.3 refuses to start without (`default_internal_user`,
/// `default_login_user`); dovecot-core's postinst creates them.
pub const DOVECOT_USERS: [&str; 2] = ["dovecot", "dovenull"];
/// Longest wait for the auth socket to appear after the start.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the master to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running private Dovecot (auth only). See the module documentation.
pub struct DovecotAuth {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl DovecotAuth {
    /// Writes the configuration and the users into `dir` (created), with the
    /// auth listener at `socket` (its directory must exist: Postfix's
    /// `private/`), starts dovecot and waits, bounded, until the socket is
    /// there. `users` are (login `user@domain`, password); `default_realm`
    /// is `auth_default_realm`. The error carries Dovecot's log.
    pub fn start(
        dir: &Path,
        socket: &Path,
        users: &[(String, String)],
        default_realm: &str,
    ) -> io::Result<DovecotAuth> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let users_file = dir.join("users");
        fs::write(&users_file, passwd_file(users)?)?;
        // The auth process reads it as the dovecot user.
        fs::set_permissions(&users_file, fs::Permissions::from_mode(0o644))?;
        let conf = dir.join("dovecot.conf");
        fs::write(&conf, dovecot_conf(dir, socket, &users_file, default_realm))?;
        let stderr = fs::File::create(dir.join("stderr"))?;
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {DOVECOT}: {e}")))?;
        let mut dovecot = DovecotAuth {
            dir: dir.to_path_buf(),
            socket: socket.to_path_buf(),
            child: Some(child),
        };
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, || {
            if let Some(child) = dovecot.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited = Some(status);
                return true;
            }
            fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        });
        if let Some(status) = exited {
            dovecot.child = None;
            return Err(io::Error::other(format!(
                "dovecot exited at start ({status})\n{}",
                dovecot.failure_text()
            )));
        }
        if !ready {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "dovecot made no auth socket at {} within {START_TIMEOUT:?}\n{}",
                    socket.display(),
                    dovecot.failure_text()
                ),
            ));
        }
        Ok(dovecot)
    }

    /// The directory of its configuration, users and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The auth socket Postfix's smtpd connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Dovecot's log (`log_path`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dovecot.log")
    }

    /// The log so far (empty if there is none yet).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// The log and what dovecot wrote to stderr, for error messages.
    fn failure_text(&self) -> String {
        format!(
            "--- {} ---\n{}\n--- {} ---\n{}\n---",
            self.log_path().display(),
            self.log_tail(30),
            self.dir.join("stderr").display(),
            tail(&read_lossy(&self.dir.join("stderr")), 30)
        )
    }

    /// SIGTERM to the master (it stops its auth, log and config processes),
    /// then waits for it; SIGKILL after [`STOP_TIMEOUT`]. Never panics.
    /// Takes about a second: the master sleeps one after telling its log
    /// process to quit (seen with strace on 2.3.19).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("/bin/kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exited = poll_until(STOP_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            eprintln!(
                "dovecot: master {} still running {STOP_TIMEOUT:?} after SIGTERM; killing it",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its children (auth, log, ...) follow the master; give them a moment
        // so that nothing holds the instance directory when it is removed.
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for DovecotAuth {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("dovecot: end of {} :\n{}", self.log_path().display(), self.log_tail(30));
        }
        self.stop();
    }
}

/// The passwd-file: one `user@domain:{PLAIN}password` line a user.
fn passwd_file(users: &[(String, String)]) -> io::Result<String> {
    let mut out = String::new();
    for (login, password) in users {
        let valid = login
            .rsplit_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty())
            && !login.contains([':', '\n'])
            && !password.contains([':', '\n']);
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Dovecot login {login:?} must be user@domain (no ':' nor newline in it or its password)"),
            ));
        }
        out.push_str(&format!("{}:{{PLAIN}}{password}\n", login.to_lowercase()));
    }
    Ok(out)
}

/// dovecot.conf for auth only, everything under `dir`.
fn dovecot_conf(dir: &Path, socket: &Path, users_file: &Path, default_realm: &str) -> String {
    let dir = dir.display();
    format!(
        "\
# Written by the egress-milter live-test harness (milter-tests/live/dovecot.rs).
# Auth only, for one private Postfix: no IMAP, POP3 or LMTP, no TCP listener.
protocols =
ssl = no
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
# A bare login gets the realm; the whole name is lowercased before lookup.
auth_default_realm = {default_realm}
auth_username_format = %Lu
auth_mechanisms = plain login
# Tests try logins that fail: no tarpit (the default is 2 s each).
auth_failure_delay = 0
# smtpd talks over a local socket without TLS.
disable_plaintext_auth = no
# Every reply to Postfix in the log (passwords are not logged).
auth_verbose = yes
auth_debug = yes

passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = static
  args = uid=dovenull gid=dovenull home=/nonexistent
}}

service auth {{
  unix_listener {socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
",
        users = users_file.display(),
        socket = socket.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_auth_only_with_the_listener_for_postfix() {
        let conf = dovecot_conf(
            Path::new("/i/dovecot"),
            Path::new("/i/spool/private/auth"),
            Path::new("/i/dovecot/users"),
            "example.com",
        );
        for line in [
            "protocols =",
            "ssl = no",
            "base_dir = /i/dovecot/run",
            "log_path = /i/dovecot/dovecot.log",
            "auth_default_realm = example.com",
            "auth_username_format = %Lu",
            "  args = scheme=PLAIN /i/dovecot/users",
            "  unix_listener /i/spool/private/auth {",
            "    user = postfix",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} missing in\n{conf}");
        }
    }

    #[test]
    fn passwd_file_holds_lowercased_logins_with_plain_passwords() {
        let users = vec![("Alice@Example.com".to_string(), "s3cret".to_string())];
        assert_eq!(
            passwd_file(&users).expect("passwd-file"),
            "alice@example.com:{PLAIN}s3cret\n"
        );
        for bad in ["alice", "@example.com", "a:b@example.com"] {
            assert!(passwd_file(&[(bad.to_string(), "x".to_string())]).is_err(), "{bad}");
        }
        assert!(passwd_file(&[("a@example.com".to_string(), "x:y".to_string())]).is_err());
    }
}
