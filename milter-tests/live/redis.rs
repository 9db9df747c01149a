// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private, throw-away Redis for the fleet scenarios: Debian's
//! `redis-server` on a free port of 127.0.0.1, in a directory of its own,
//! never the machine's Redis (`install-deps.sh` installs the package and
//! leaves its service stopped).
//!
//! ```text
//! DIR/redis.log      its log (`--logfile`; every start appends)
//! DIR/redis.stderr   what it says before the log file is open (bad arguments)
//! ```
//!
//! It keeps nothing on disk (`--save "" --appendonly no`), so
//! [`RedisServer::kill9`] then [`RedisServer::start_again`] is a Redis that
//! crashed and came back empty, on the same port, as the hosts of a fleet
//! see it. Dropping it kills it and deletes the directory, also when a test
//! panics (after printing the end of its log); `EGRESS_MILTER_LIVE_KEEP=1`
//! keeps the directory.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::egress::{free_port, poll_until, read_lossy, tail};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Debian's server binary (package `redis-server`).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Debian's client (package `redis-tools`).
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// Longest wait for a started server to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single `redis-cli` call may take (it answers in milliseconds;
/// a hung one must not hang the test).
const CLI_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at starting with a fresh port when the chosen one was taken.
const START_ATTEMPTS: usize = 3;

/// A running (or killed) private `redis-server`. See the module documentation.
pub struct RedisServer {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Length of the log when the current process was started.
    log_start: usize,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (bounded) until it
    /// answers `PING`. Panics with the reason and its log when it does not:
    /// a fleet test must never pass without its Redis.
    pub fn start() -> RedisServer {
        for binary in [REDIS_SERVER, REDIS_CLI] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install redis-server and redis-tools with milter-tests/install-deps.sh (as \
                 root)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("egress-live-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let root = dir.path().to_path_buf();
        let mut redis = RedisServer {
            dir: Some(dir),
            root,
            port: free_port().expect("a free port for redis"),
            child: None,
            log_start: 0,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match redis.launch() {
                Ok(()) => return redis,
                Err(err) if attempts < START_ATTEMPTS && redis.log_since_start().contains("Address already in use") => {
                    eprintln!("redis: port {} was taken, trying another: {err}", redis.port);
                    redis.port = free_port().expect("a free port for redis");
                }
                Err(err) => panic!("redis-server did not start: {err}"),
            }
        }
    }

    /// Starts the server on its port (which must be free) and waits until it
    /// answers `PING`, bounded by [`START_TIMEOUT`].
    fn launch(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("redis-server is already running"));
        }
        self.log_start = fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let stderr = fs::File::create(self.root.join("redis.stderr"))?;
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.root)
            .arg("--logfile")
            .arg(self.log_path())
            // Nothing on disk: a restart comes back empty.
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // No unix socket, no protected-mode surprises: loopback only.
            .args(["--unixsocket", "", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {REDIS_SERVER}: {e}")))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server (pid {pid}) exited with {status} at start:\n{}{}",
                    read_lossy(&self.root.join("redis.stderr")),
                    self.log_since_start()
                )));
            }
            if self.ping() {
                eprintln!(
                    "redis: started (pid {pid}) at {} on 127.0.0.1:{}",
                    self.root.display(),
                    self.port
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server (pid {pid}) did not answer PING on port {} within {START_TIMEOUT:?}:\n{}",
                        self.port,
                        self.log_since_start()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis dies at once, as in a crash; its data is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("redis: killed (SIGKILL) on port {}", self.port);
        }
    }

    /// Starts it again on the same port, empty (nothing is persisted).
    /// Panics if it does not answer `PING` in time.
    pub fn start_again(&mut self) {
        self.launch()
            .unwrap_or_else(|e| panic!("redis-server did not start again on port {}: {e}", self.port));
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether it answers `PING` with `PONG` now.
    pub fn ping(&self) -> bool {
        self.try_cli(&["PING"]).is_ok_and(|reply| reply == "PONG")
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL for egress-milter's `[store] url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its reply as redis-cli
    /// prints it to a pipe (raw: `1`, `PONG`, one line per element of an
    /// array), trimmed. Panics if it fails (Redis down, an error reply):
    /// use [`Self::try_cli`] where that is expected.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| {
            panic!(
                "redis-cli {args:?} failed: {e}\n--- redis log ---\n{}",
                self.log_tail(20)
            )
        })
    }

    /// Like [`Self::cli`], with the failure as an error. Bounded by
    /// [`CLI_TIMEOUT`].
    pub fn try_cli(&self, args: &[&str]) -> io::Result<String> {
        let mut child = Command::new(REDIS_CLI)
            // -e: an error reply is a failure (exit 1), not just text.
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-e"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {REDIS_CLI}: {e}")))?;
        let deadline = Instant::now() + CLI_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-cli {args:?} did not finish within {CLI_TIMEOUT:?}"),
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(io::Error::other(format!(
                "{}: {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Waits until `HEXISTS key field` says 1; true if it did within
    /// `timeout` (a Redis that is down counts as not yet).
    pub fn wait_for_hash_field(&self, key: &str, field: &str, timeout: Duration) -> bool {
        poll_until(timeout, || {
            self.try_cli(&["HEXISTS", key, field]).is_ok_and(|r| r == "1")
        })
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("redis.log")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The log of the current (or last) run only.
    pub fn log_since_start(&self) -> String {
        self.log().get(self.log_start..).unwrap_or("").to_string()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "redis: test failed; end of {} :\n{}\n(set EGRESS_MILTER_LIVE_KEEP=1 to keep it)",
                self.log_path().display(),
                self.log_tail(20)
            );
        }
        self.kill9();
        if std::env::var("EGRESS_MILTER_LIVE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("redis: kept {}", dir.keep().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::skip_unless_live;

    /// The private Redis: it answers PING, is gone after SIGKILL, and comes
    /// back empty on the same port.
    #[test]
    fn redis_fixture_self_test() {
        if skip_unless_live() {
            return;
        }
        let mut redis = RedisServer::start();
        let port = redis.port();
        assert_eq!(redis.cli(&["PING"]), "PONG");
        assert_eq!(redis.cli(&["HSET", "k{locks}:entries", "a@example.com", "{}"]), "1");
        assert_eq!(redis.cli(&["HEXISTS", "k{locks}:entries", "a@example.com"]), "1");
        assert!(redis.wait_for_hash_field("k{locks}:entries", "a@example.com", Duration::from_secs(5)));

        let killed = Instant::now();
        redis.kill9();
        assert!(!redis.is_running());
        assert!(!redis.ping(), "PING answered after SIGKILL");
        assert!(redis.try_cli(&["PING"]).is_err());
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "kill9 and a refused PING took {:?}",
            killed.elapsed()
        );

        let restarted = Instant::now();
        redis.start_again();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cli(&["PING"]), "PONG");
        assert_eq!(
            redis.cli(&["HEXISTS", "k{locks}:entries", "a@example.com"]),
            "0",
            "data survived"
        );
        assert_eq!(redis.cli(&["DBSIZE"]), "0");
        println!("redis restarted in {:?}", restarted.elapsed());
        assert!(
            redis.log().contains("Ready to accept connections"),
            "{}",
            redis.log_tail(20)
        );
    }
}
