// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private, throw-away rspamd for the content-verdict test: Debian's
//! `rspamd` (install-deps.sh installs it and leaves its service disabled
//! and stopped) run in the foreground on a free loopback port, from a
//! minimal top-level configuration written here, never the machine's
//! /etc/rspamd.
//!
//! ```text
//! DIR/rspamd.conf    the configuration (RSPAMD_CONF below)
//! DIR/rules.lua      one Lua rule: TEST_PHISHING, for links to PHISHING_HOST
//! DIR/rspamd.log     its log; DIR/rspamd.stderr what it says before
//! ```
//!
//! Only the normal worker runs (rspamd's HTTP protocol, `POST /checkv2`),
//! with no modules and no rules but the one above, and no DNS: a verdict
//! is GTUBE (rspamd's core detects the test string and answers "reject"),
//! TEST_PHISHING, or nothing. The hyperscan databases rspamd compiles at
//! its first start (~15 s of CPU on two cores, even with no rules: the URL
//! and TLD matchers) are kept in [`HS_CACHE`], so later starts take about
//! a second. Dropping it stops it and deletes the directory, also when a
//! test panics (after printing the end of its log);
//! `EGRESS_MILTER_LIVE_KEEP=1` keeps the directory.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::egress::{free_port, poll_until, read_lossy, tail};
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's daemon (package `rspamd`).
pub const RSPAMD: &str = "/usr/bin/rspamd";
/// Where the compiled hyperscan databases are kept between runs (as
/// bench/run-fleet-e2e.sh keeps its own).
pub const HS_CACHE: &str = "/var/cache/egress-milter-tests/rspamd-hs";
/// The longest wait for a started rspamd to answer `/ping`: its first
/// start compiles hyperscan databases for ~15 s of CPU, more on a busy
/// machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// The host whose links make TEST_PHISHING. A real-looking name: rspamd
/// finds URLs in text only under a known public suffix (`.test` is none).
/// Nothing resolves it (no DNS here) and nothing is delivered beyond the
/// suite's sink.
pub const PHISHING_HOST: &str = "login.example-bank.com";

/// The whole configuration (a top-level file: nothing of /etc/rspamd is
/// included; see bench/configs/rspamd/rspamd.conf for what that leaves
/// out). `$T_*` are set with `--var` at start.
const RSPAMD_CONF: &str = r#"# A private rspamd for egress-milter's live content test (written by
# milter-tests/live/rspamd.rs): the normal worker only, no modules, no DNS.
options {
    pidfile = "$T_DIR/rspamd.pid";
    filters = "";
    explicit_modules = [];
    cache_file = "$T_DIR/symbols.cache";
    dynamic_conf = "$T_DIR/rspamd_dynamic";
    history_file = "$T_DIR/rspamd.history";
    stats_file = "$T_DIR/stats.ucl";
    hs_cache_dir = "$T_HS_CACHE/";
    control_socket = "$T_DIR/rspamd.sock mode=0600";
    dns {
        nameserver = ["127.0.0.1:1"];
        timeout = 0.1s;
        retransmits = 0;
    }
    task_timeout = 8s;
    tempdir = "$T_DIR";
}
logging {
    type = "file";
    filename = "$T_DIR/rspamd.log";
    level = "info";
}
actions {
    reject = 15;
    add_header = 6;
    greylist = 4;
}
lua = "$T_DIR/rules.lua";
worker "normal" {
    bind_socket = "$T_LISTEN";
    count = 1;
}
"#;

/// TEST_PHISHING, with a score below every action: phishing, not spam.
const RULES_LUA: &str = r#"-- TEST_PHISHING: a message linking to the test's phishing host.
rspamd_config.TEST_PHISHING = {
  callback = function(task)
    for _, u in ipairs(task:get_urls() or {}) do
      if u:get_host() == 'PHISHING_HOST' then
        return true
      end
    end
    return false
  end,
  score = 1.0,
  description = 'links to the test phishing host',
}
"#;

/// A running (or stopped) private rspamd. See the module documentation.
pub struct RspamdServer {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RspamdServer {
    /// Writes the configuration, starts rspamd on a free loopback port and
    /// waits (bounded) until it answers `/ping`. Panics with the reason and
    /// its log when it does not: the test must never pass without it.
    pub fn start() -> RspamdServer {
        assert!(
            Path::new(RSPAMD).exists(),
            "{RSPAMD} is missing: install rspamd with milter-tests/install-deps.sh (as root)"
        );
        let dir = tempfile::Builder::new()
            .prefix("egress-live-rspamd-")
            .tempdir()
            .expect("temp dir for rspamd");
        let root = dir.path().to_path_buf();
        fs::write(root.join("rspamd.conf"), RSPAMD_CONF).expect("write rspamd.conf");
        fs::write(
            root.join("rules.lua"),
            RULES_LUA.replace("PHISHING_HOST", PHISHING_HOST),
        )
        .expect("write rules.lua");
        fs::create_dir_all(HS_CACHE).expect("create the hyperscan cache directory");
        // rspamd's workers run as _rspamd: they write the log, the state
        // files and the hyperscan cache.
        for path in [root.as_path(), Path::new(HS_CACHE)] {
            let status = Command::new("chown")
                .args(["-R", "_rspamd:_rspamd"])
                .arg(path)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown _rspamd {}", path.display());
        }
        let mut rspamd = RspamdServer {
            dir: Some(dir),
            root,
            port: free_port().expect("a free port for rspamd"),
            child: None,
        };
        if let Err(err) = rspamd.launch() {
            panic!("rspamd did not start: {err}\n{}", tail(&rspamd.log(), 30));
        }
        rspamd
    }

    fn launch(&mut self) -> io::Result<()> {
        let stderr = fs::File::create(self.root.join("rspamd.stderr"))?;
        let child = Command::new(RSPAMD)
            .args(["-f", "-u", "_rspamd", "-g", "_rspamd", "-c"])
            .arg(self.root.join("rspamd.conf"))
            .arg("--var")
            .arg(format!("T_DIR={}", self.root.display()))
            .arg("--var")
            .arg(format!("T_HS_CACHE={HS_CACHE}"))
            .arg("--var")
            .arg(format!("T_LISTEN=127.0.0.1:{}", self.port))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {RSPAMD}: {e}")))?;
        self.child = Some(child);
        let up = poll_until(START_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "rspamd exited with {status}:\n{}\n{}",
                    read_lossy(&self.root.join("rspamd.stderr")),
                    tail(&self.log(), 30)
                );
            }
            self.ping()
        });
        if up {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer to /ping on port {} within {START_TIMEOUT:?}", self.port),
            ))
        }
    }

    /// Whether it answers `GET /ping` with `pong`.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(s, "GET /ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("pong")
    }

    /// `http://127.0.0.1:PORT`, for `[scanner] url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        read_lossy(&self.root.join("rspamd.log"))
    }

    /// SIGTERM to the main process (it stops its workers), then waits;
    /// SIGKILL after 10 s. Nothing listens on the port afterwards.
    pub fn stop(&mut self) {
        self.halt();
        assert!(
            poll_until(Duration::from_secs(10), || !self.ping()),
            "rspamd still answers after it was stopped"
        );
    }

    fn halt(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let exited = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some());
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RspamdServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- rspamd log (end) ---\n{}", tail(&self.log(), 20));
        }
        self.halt();
        if std::env::var("EGRESS_MILTER_LIVE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept rspamd directory {}", dir.keep().display());
        }
    }
}
