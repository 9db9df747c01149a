// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private `redis-server` on a loopback port, for the tests of the fleet
//! store: no persistence, its own directory, killed when dropped.
//!
//! Debian's `redis-server` is installed by milter-tests/install-deps.sh.
//! Without it the tests that need it are skipped, unless
//! `EGRESS_MILTER_LIVE=1` (as in CI), where a missing server fails them.

#![allow(dead_code)] // shared by both test binaries; not all of it used by each

use super::ports::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const SERVER: &str = "redis-server";
const CLI: &str = "redis-cli";

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (after saying so) when Redis is not
    /// installed and the suite does not require it.
    pub fn start() -> Option<RedisServer> {
        if Command::new(SERVER).arg("--version").output().is_err() {
            if std::env::var("EGRESS_MILTER_LIVE").as_deref() == Ok("1") {
                panic!("{SERVER} is not installed: run milter-tests/install-deps.sh as root");
            }
            eprintln!("skipped: {SERVER} is not installed (milter-tests/install-deps.sh)");
            return None;
        }
        let port = free_port().expect("no free loopback port");
        let dir = tempfile::tempdir().expect("no temporary directory for Redis");
        let mut server = RedisServer { port, dir, child: None };
        server.start_again();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server (again, empty) on its port and waits until it answers.
    pub fn start_again(&mut self) {
        let child = Command::new(SERVER)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis vanishes mid-conversation, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new(CLI)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
