// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The daemon under test: the real `egress-milter` binary, run as an admin
//! runs it (`egress-milter --config FILE run`), one instance per test.
//!
//! [`MilterConfig`] loads the shipped example (`conf/egress-milter.toml`) or
//! a fixture (`milter-tests/live/fixtures/NAME.toml`) and changes single keys.
//! [`EgressMilter::start`] writes that configuration into a temporary
//! directory of its own, with only `socket` (a free port on 127.0.0.1, or
//! with [`EgressMilter::start_unix`] the unix socket `DIR/milter.sock`) and
//! `[locks] file` replaced, starts the binary with its stderr going to
//! `DIR/egress-milter.log`, and waits (bounded) until it listens:
//!
//! ```text
//! DIR/egress-milter.toml   the configuration the daemon reads (SIGHUP re-reads it)
//! DIR/locks.toml           its lock list
//! DIR/egress-milter.log    its log (every start of the instance appends)
//! ```
//!
//! Dropping it stops the daemon (SIGTERM, then SIGKILL after
//! [`STOP_TIMEOUT`]) and deletes the directory, also when the test panics;
//! on a panic the end of the daemon's log is printed first. With
//! `EGRESS_MILTER_LIVE_KEEP=1` the directory is kept.

#![allow(dead_code)] // harness API: not every helper is used by every test

use egress_milter::config::Config;
use egress_milter::locks::file::{LockEntry, LockList};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The binary Cargo built for this test run.
pub const BINARY: &str = env!("CARGO_BIN_EXE_egress-milter");
/// Longest wait for the daemon to listen after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the daemon to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Polling interval of every bounded wait here.
const POLL: Duration = Duration::from_millis(20);
/// What the daemon logs once its socket is bound.
const STARTED: &str = "egress-milter started";
/// Attempts at starting with a fresh port when the chosen one was taken.
const START_ATTEMPTS: usize = 3;

/// A configuration for the daemon, as TOML, changed key by key.
#[derive(Clone, Debug)]
pub struct MilterConfig {
    table: toml::Table,
    /// Where it was loaded from, for messages.
    origin: String,
}

impl MilterConfig {
    /// The shipped example, `conf/egress-milter.toml`.
    pub fn example() -> MilterConfig {
        Self::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/egress-milter.toml"))
    }

    /// A fixture, `milter-tests/live/fixtures/NAME`.
    pub fn fixture(name: &str) -> MilterConfig {
        Self::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("milter-tests/live/fixtures")
                .join(name),
        )
    }

    fn load(path: &Path) -> MilterConfig {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let table = text
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
        MilterConfig {
            table,
            origin: path.display().to_string(),
        }
    }

    /// Sets a key, by its dotted path: `"mode"`, `"locks.locked_action"`,
    /// `"identity.trust_authenticated_headers"`. Tables on the way are
    /// created when missing.
    pub fn set(mut self, dotted: &str, value: impl Into<toml::Value>) -> MilterConfig {
        let mut keys: Vec<&str> = dotted.split('.').collect();
        let last = keys.pop().expect("a key");
        let mut table = &mut self.table;
        for key in keys {
            table = table
                .entry(key)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{dotted}: \"{key}\" is not a table"));
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// Sets a key of the `[[rule]]` named `rule`, such as its `rate`.
    /// Panics if there is no such rule.
    pub fn set_rule(mut self, rule: &str, key: &str, value: impl Into<toml::Value>) -> MilterConfig {
        let origin = self.origin.clone();
        let entry = self
            .rules_mut()
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .find(|r| r.get("name").and_then(toml::Value::as_str) == Some(rule))
            .unwrap_or_else(|| panic!("{origin} has no rule \"{rule}\""));
        entry.insert(key.to_string(), value.into());
        self
    }

    fn rules_mut(&mut self) -> &mut Vec<toml::Value> {
        self.table
            .entry("rule")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .expect("rule is an array of tables")
    }

    /// The configuration as a TOML table, to read it whole.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// The configuration as a TOML table, to change more than single keys
    /// (append tables, rewrite every rate).
    pub fn table_mut(&mut self) -> &mut toml::Table {
        &mut self.table
    }

    /// The value at a dotted path, if set.
    pub fn get(&self, dotted: &str) -> Option<&toml::Value> {
        let mut keys = dotted.split('.');
        let mut value = self.table.get(keys.next()?)?;
        for key in keys {
            value = value.as_table()?.get(key)?;
        }
        Some(value)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        format!(
            "# From {}, changed by the live-test harness.\n{}",
            self.origin, self.table
        )
    }
}

/// A running (or stopped) `egress-milter run`. See the module documentation.
pub struct EgressMilter {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// The TCP port on 127.0.0.1, when it listens on one.
    port: u16,
    /// Listens on `DIR/milter.sock` instead of a port.
    unix: bool,
    child: Option<Child>,
    /// Length of the log when the current process was started.
    log_start: usize,
}

impl EgressMilter {
    /// Writes `config` into a fresh directory with its own port and lock
    /// list, starts the daemon and waits until it listens. Panics with the
    /// daemon's log when it does not start.
    pub fn start(config: &MilterConfig) -> EgressMilter {
        Self::start_with(Self::prepare(config), config)
    }

    /// Like [`Self::start`], listening on the unix socket `DIR/milter.sock`
    /// (mode 0666, so that smtpd, running as the `postfix` user, may connect
    /// to a socket that the daemon, running as root here, creates).
    pub fn start_unix(config: &MilterConfig) -> EgressMilter {
        let config = config.clone().set("socket_mode", "0666");
        let mut milter = Self::prepare(&config);
        milter.unix = true;
        milter.write_config(&config.to_toml());
        Self::start_with(milter, &config)
    }

    fn start_with(mut milter: EgressMilter, config: &MilterConfig) -> EgressMilter {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match milter.launch() {
                Ok(()) => return milter,
                Err(err)
                    if !milter.unix
                        && attempts < START_ATTEMPTS
                        && milter.log_since_start().contains("Address already in use") =>
                {
                    eprintln!("egress-milter: port {} was taken, trying another: {err}", milter.port);
                    milter.port = free_port().expect("a free port");
                    milter.write_config(&config.to_toml());
                }
                Err(err) => panic!("egress-milter did not start: {err}"),
            }
        }
    }

    /// Like [`Self::start`] without starting the daemon: its port is chosen
    /// (free now, nobody listens) and its configuration written. Start it
    /// later with [`Self::launch`].
    pub fn prepare(config: &MilterConfig) -> EgressMilter {
        let dir = tempfile::Builder::new()
            .prefix("egress-live-milter-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        // Readable by the postfix user, should a unix socket be put here.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod the milter directory");
        let milter = EgressMilter {
            dir: Some(dir),
            root,
            port: free_port().expect("a free port"),
            unix: false,
            child: None,
            log_start: 0,
        };
        milter.write_config(&config.to_toml());
        milter
    }

    /// Replaces the configuration file with `text` (socket and lock file
    /// set to this instance's); takes effect on [`Self::sighup`] or a
    /// restart. The text need not be valid: a test may break it on purpose.
    pub fn write_config(&self, text: &str) {
        fs::write(self.config_path(), self.pin(text)).expect("write the milter configuration");
    }

    /// `text` with `socket` and `[locks] file` replaced by this instance's,
    /// kept as they are where the text does not parse.
    fn pin(&self, text: &str) -> String {
        let Ok(mut table) = text.parse::<toml::Table>() else {
            return text.to_string();
        };
        table.insert("socket".into(), self.socket().into());
        let locks = table
            .entry("locks")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(locks) = locks.as_table_mut() {
            locks.insert("file".into(), self.lock_file().display().to_string().into());
        }
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{header}{table}")
    }

    /// Starts the daemon and waits until it listens (bounded by
    /// [`START_TIMEOUT`]); an error with its log when it exits or does not
    /// listen in time.
    pub fn launch(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("egress-milter is already running"));
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        self.log_start = fs::metadata(self.log_path())?.len() as usize;
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(self.config_path())
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {BINARY}: {e}")))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(io::Error::other(format!(
                    "egress-milter (pid {pid}) exited with {status} at start:\n{}",
                    self.log_since_start()
                )));
            }
            if self.log_since_start().contains(STARTED) && self.is_listening() {
                eprintln!(
                    "egress-milter: started (pid {pid}) at {} on {}",
                    self.root.display(),
                    self.socket()
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "egress-milter (pid {pid}) did not listen on {} within {START_TIMEOUT:?}:\n{}",
                        self.socket(),
                        self.log_since_start()
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Whether the socket is ready for connections: a port in LISTEN state
    /// (read from /proc/net/tcp, not probed: a probe would be a milter
    /// session), or the unix socket file.
    fn is_listening(&self) -> bool {
        if self.unix {
            fs::symlink_metadata(self.unix_socket_path()).is_ok_and(|m| m.file_type().is_socket())
        } else {
            crate::postfix::is_listening(self.port)
        }
    }

    /// The milter socket in Postfix notation, for `smtpd_milters` (and
    /// `socket` in the daemon's configuration).
    pub fn socket(&self) -> String {
        if self.unix {
            format!("unix:{}", self.unix_socket_path().display())
        } else {
            format!("inet:127.0.0.1:{}", self.port)
        }
    }

    /// The unix socket's path (used with [`Self::start_unix`] only).
    pub fn unix_socket_path(&self) -> PathBuf {
        self.root.join("milter.sock")
    }

    /// The port on 127.0.0.1 (not in use with [`Self::start_unix`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The configuration file the daemon reads.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("egress-milter.toml")
    }

    /// The lock list.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("locks.toml")
    }

    /// The daemon's log (stderr), every run of this instance.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("egress-milter.log")
    }

    /// The configuration as the daemon reads it (validated by egress-milter's
    /// own parser), for computing expectations from it.
    pub fn config(&self) -> Config {
        Config::read(&self.config_path()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The log of the current (or last) run only.
    pub fn log_since_start(&self) -> String {
        let log = self.log();
        log.get(self.log_start..).unwrap_or("").to_string()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// The log lines containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until some log line contains every one of `needles`; true if
    /// one did within `timeout`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> bool {
        poll_until(timeout, || !self.log_lines(needles).is_empty())
    }

    /// The PID of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the daemon.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("egress-milter is not running");
        let status = Command::new("/bin/kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run /bin/kill");
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// SIGHUP: re-read the configuration and the lock list.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    /// The exit status, or None if it was not running or had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("/bin/kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                _ => {
                    eprintln!(
                        "egress-milter: pid {} still running {STOP_TIMEOUT:?} after SIGTERM; killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// SIGKILL: the daemon dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`Self::stop`] and [`Self::launch`] again: same port, configuration
    /// and lock list. Panics if the stop was not clean or the start fails.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "egress-milter did not stop cleanly ({status:?}):\n{}",
            self.log_tail(30)
        );
        self.launch()
            .unwrap_or_else(|e| panic!("egress-milter did not restart: {e}"));
    }

    /// The lock list as the file says now (empty when there is no file).
    pub fn locks(&self) -> LockList {
        LockList::read(&self.lock_file(), |s: &str| Ok(s.trim().to_lowercase())).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the lock file holds `identity`; its entry, or None.
    pub fn wait_for_lock(&self, identity: &str, timeout: Duration) -> Option<LockEntry> {
        let mut found = None;
        poll_until(timeout, || {
            found = self.locks().get(identity).cloned();
            found.is_some()
        });
        found
    }

    /// Runs `egress-milter --config FILE ARGS...` (the admin commands).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run egress-milter")
    }
}

impl Drop for EgressMilter {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "egress-milter: test failed; end of {} :\n{}\n(set EGRESS_MILTER_LIVE_KEEP=1 to keep it)",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        self.stop();
        if std::env::var("EGRESS_MILTER_LIVE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("egress-milter: kept {}", dir.keep().display());
        }
    }
}

pub use crate::ports::{claim_port, free_port};

/// A log file as text (invalid UTF-8 replaced; empty if there is none yet).
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `cond` every [`POLL`] until it holds (true) or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}
