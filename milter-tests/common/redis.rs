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
    /// More arguments for `redis-server` (a replica's `--replicaof`).
    extra: Vec<String>,
    /// A configuration file it starts with.
    config: Option<PathBuf>,
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
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            extra: Vec::new(),
            config: None,
        };
        server.start_again();
        Some(server)
    }

    /// One that starts with the configuration file `conf` (its port, bind
    /// address and directory still set here).
    pub fn start_with_config(conf: &std::path::Path) -> Option<RedisServer> {
        let mut server = Self::start()?;
        server.kill9();
        server.config = Some(conf.to_owned());
        server.start_again();
        Some(server)
    }

    /// A replica of `master`.
    pub fn replica_of(master: &RedisServer) -> RedisServer {
        let mut server = RedisServer {
            port: free_port().expect("no free loopback port"),
            dir: tempfile::tempdir().expect("no temporary directory for Redis"),
            child: None,
            extra: vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()],
            config: None,
        };
        server.start_again();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.cli(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not sync",
                server.port
            );
            thread::sleep(Duration::from_millis(20));
        }
        server
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
            .args(self.config.iter())
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
            .args(&self.extra)
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

/// One `redis-sentinel` watching `master` (quorum 1, down after 500 ms).
pub struct Sentinel {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sentinel {
    pub const MASTER: &str = "egress";

    pub fn start(master: &RedisServer) -> Sentinel {
        let port = free_port().expect("no free loopback port");
        let dir = tempfile::tempdir().expect("no temporary directory for Sentinel");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile {}\n\
                 sentinel monitor {m} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {m} 500\n\
                 sentinel failover-timeout {m} 3000\n",
                dir.path().join("sentinel.log").display(),
                master.port,
                m = Self::MASTER,
            ),
        )
        .expect("cannot write sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-sentinel (Debian package redis-sentinel)");
        let sentinel = Sentinel { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel.master_port().is_none_or(|p| p != master.port) {
            assert!(
                Instant::now() < deadline,
                "Sentinel did not come up:\n{}",
                sentinel.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port of the master Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = Command::new(CLI)
            .args([
                "-p",
                &self.port.to_string(),
                "SENTINEL",
                "get-master-addr-by-name",
                Self::MASTER,
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
