// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Test harness: the daemon in-process (with a manual clock) or as the real
//! binary, and an MTA-like client that plays SMTP transactions through
//! indymilter-test the way Postfix does.

#![allow(dead_code)]

mod ports;
pub mod redis;

use egress_milter::clock::Clock;
use egress_milter::config::Config;
use egress_milter::locks::file as lockfile;
use egress_milter::milter::listener::{MilterListener, QuickAckListener};
use egress_milter::{daemon, locks};
use indymilter_test::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Logs of in-process daemons go to the test output when
/// `EGRESS_MILTER_TEST_LOG` is set to a filter such as `debug`.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("EGRESS_MILTER_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Reads a fixture from milter-tests/fixtures.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("milter-tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The repository's example configuration.
pub fn example_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/egress-milter.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Writes `config` into `dir` with the socket and lock list pointed into it.
/// Lines setting `socket` or `[locks] file` in `config` are replaced.
pub fn write_config(dir: &Path, config: &str, socket: &str) -> PathBuf {
    // The socket line first: top-level keys must precede tables.
    let mut out = format!("socket = \"{socket}\"\n");
    let mut in_locks = false;
    let mut locks_seen = false;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_locks = trimmed.starts_with("[locks]");
            locks_seen |= in_locks;
        }
        if trimmed.starts_with("socket =") || (in_locks && trimmed.starts_with("file =")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if trimmed.starts_with("[locks]") {
            out.push_str("file = \"locks.toml\"\n");
        }
    }
    if !locks_seen {
        out.push_str("\n[locks]\nfile = \"locks.toml\"\n");
    }
    let path = dir.join("egress-milter.toml");
    std::fs::write(&path, out).unwrap();
    path
}

/// The daemon running in this process.
pub struct Milter {
    pub addr: SocketAddr,
    pub clock: Clock,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub lock_path: PathBuf,
    reload: mpsc::Sender<()>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Milter {
    pub async fn spawn(config: &str) -> Milter {
        Self::spawn_in(tempfile::tempdir().unwrap(), config, Clock::manual()).await
    }

    pub async fn spawn_in(dir: tempfile::TempDir, config: &str, clock: Clock) -> Milter {
        init_test_logging();
        // Held from here on, but the port must not be one handed out by
        // free_port() to a daemon process that has not bound it yet.
        let (listener, addr) = loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            if claim_port(addr.port()) {
                break (listener, addr);
            }
        };
        let config_path = write_config(dir.path(), config, &format!("inet:{addr}"));
        let config = Config::read_with_secrets(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let lock_path = config.locks.file.clone();
        let locks = locks::open_locks(&config).unwrap_or_else(|e| panic!("{e}"));
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let listener = MilterListener::Tcp(QuickAckListener::new(listener, config.tcp_quickack));
        let handle = tokio::spawn(daemon::run(
            listener,
            config_path.clone(),
            config,
            locks,
            clock.clone(),
            reload_rx,
            async {
                let _ = shutdown_rx.await;
            },
        ));
        Milter {
            addr,
            clock,
            dir,
            config_path,
            lock_path,
            reload: reload_tx,
            shutdown: Some(shutdown_tx),
            handle: Some(handle),
        }
    }

    pub async fn mta(&self) -> Mta {
        Mta::open(self.addr).await
    }

    /// Asks for a reload (as SIGHUP does).
    pub async fn reload(&self) {
        self.reload.send(()).await.unwrap();
    }

    /// Stops the daemon (pending locks are written) and returns its directory.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// The lock list as it is on disk.
    pub fn lock_list(&self) -> lockfile::LockList {
        read_lock_list(&self.lock_path)
    }
}

pub fn read_lock_list(path: &Path) -> lockfile::LockList {
    lockfile::LockList::read(path, |s| Ok(s.to_string())).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// How the milter answered one SMTP transaction.
#[derive(Debug, Default)]
pub struct Outcome {
    pub mail: Option<Status>,
    pub rcpts: Vec<Status>,
    pub eoh: Option<Status>,
    pub eom: Option<Status>,
    pub actions: Option<EomActions>,
}

impl Outcome {
    /// Whether the MTA would have accepted the message (for at least one recipient).
    pub fn accepted(&self) -> bool {
        self.eom == Some(Status::Continue) || self.eom == Some(Status::Accept)
    }

    /// The first refusal's reply text, e.g. "451 4.7.1 Rate limit …".
    pub fn refusal(&self) -> Option<String> {
        let statuses = self.mail.iter().chain(&self.rcpts).chain(&self.eoh).chain(&self.eom);
        statuses.into_iter().find_map(|s| match s {
            Status::Tempfail { message } | Status::Reject { message } => Some(
                message
                    .as_ref()
                    .map_or_else(|| "(default reply)".into(), |m| m.to_string_lossy().into_owned()),
            ),
            _ => None,
        })
    }

    /// Whether the whole message was refused with 4xx, at whatever stage
    /// (a message throttle is asked at MAIL and refuses once the envelope
    /// is known: at DATA through an MTA, here at the end of the headers).
    pub fn tempfailed(&self) -> bool {
        let whole = self.mail.iter().chain(&self.eoh).chain(&self.eom);
        whole.into_iter().any(|s| matches!(s, Status::Tempfail { .. }))
    }

    pub fn held(&self) -> bool {
        self.actions.as_ref().is_some_and(|a| a.has_quarantine(any()))
    }
}

fn refused(s: &Status) -> bool {
    matches!(s, Status::Tempfail { .. } | Status::Reject { .. })
}

/// One message as an MTA would hand it to the milter.
#[derive(Clone, Debug)]
pub struct Msg {
    pub client: [u8; 4],
    pub auth: Option<String>,
    pub from: String,
    pub rcpts: Vec<String>,
    pub headers: Vec<(String, String)>,
    /// Sent after the headers where the milter asked for bodies.
    pub body: Option<String>,
    pub queue_id: String,
}

/// A number no other message of the test run has: `{n}` in a recipient
/// becomes it at each send, so that each message sent is a new envelope, as
/// a sender's new mail is (the milter does not count a client's retry of an
/// envelope refused with 4xx as a new attempt).
fn next_message() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Msg {
    pub fn from_user(login: &str) -> Msg {
        Msg {
            client: [192, 0, 2, 10],
            auth: Some(login.into()),
            from: format!("<{login}>"),
            rcpts: vec!["<friend-{n}@example.net>".into()],
            headers: vec![("Subject".into(), "hello".into())],
            body: None,
            queue_id: "4ABCDEF".into(),
        }
    }

    pub fn unauthenticated(client: [u8; 4], from: &str) -> Msg {
        Msg {
            client,
            auth: None,
            from: format!("<{from}>"),
            rcpts: vec!["<friend-{n}@example.net>".into()],
            headers: vec![("Subject".into(), "hello".into())],
            body: None,
            queue_id: "4ABCDEF".into(),
        }
    }

    pub fn rcpts(mut self, n: usize) -> Msg {
        self.rcpts = (0..n).map(|i| format!("<r{i}-{{n}}@example.net>")).collect();
        self
    }

    pub fn to(mut self, rcpts: &[&str]) -> Msg {
        self.rcpts = rcpts.iter().map(|r| format!("<{r}>")).collect();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Msg {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, text: &str) -> Msg {
        self.body = Some(text.into());
        self
    }
}

/// A milter connection playing the MTA's side.
pub struct Mta {
    conn: TestConnection,
}

impl Mta {
    pub async fn open(addr: SocketAddr) -> Mta {
        let conn = TestConnection::configure()
            .read_timeout(Duration::from_secs(10))
            .write_timeout(Duration::from_secs(10))
            .open_tcp(addr)
            .await
            .expect("milter connection");
        Mta { conn }
    }

    pub fn negotiated_actions(&self) -> Actions {
        self.conn.negotiated_actions()
    }

    pub fn negotiated_opts(&self) -> ProtoOpts {
        self.conn.negotiated_opts()
    }

    pub fn requested_macros(&self) -> &std::collections::HashMap<MacroStage, std::ffi::CString> {
        self.conn.requested_macros()
    }

    /// Plays connect + one transaction (one connection per message, as
    /// Postfix does per SMTP session). Stops at the first message-level refusal.
    pub async fn send(addr: SocketAddr, msg: &Msg) -> Outcome {
        let mut mta = Mta::open(addr).await;
        let status = mta.conn.connect("client.example", msg.client).await.unwrap();
        assert_eq!(status, Status::Continue);
        let outcome = mta.transaction(msg).await;
        mta.conn.close().await.unwrap();
        outcome
    }

    /// Like [`Mta::send`], from `client` with its port: an SMTP client
    /// has one, while Postfix's local submissions come from port 0.
    pub async fn send_from(addr: SocketAddr, client: SocketAddr, msg: &Msg) -> Outcome {
        let mut mta = Mta::open(addr).await;
        let status = mta.conn.connect("client.example", client).await.unwrap();
        assert_eq!(status, Status::Continue);
        let outcome = mta.transaction(msg).await;
        mta.conn.close().await.unwrap();
        outcome
    }

    pub async fn connect(&mut self, client: [u8; 4]) {
        let status = self.conn.connect("client.example", client).await.unwrap();
        assert_eq!(status, Status::Continue);
    }

    /// One transaction on an open connection.
    pub async fn transaction(&mut self, msg: &Msg) -> Outcome {
        let conn = &mut self.conn;
        let mut out = Outcome::default();
        let mut macros = vec![("i", msg.queue_id.as_str())];
        if let Some(auth) = &msg.auth {
            macros.push(("{auth_authen}", auth.as_str()));
        }
        conn.macros(MacroStage::Mail, macros).await.unwrap();
        let status = conn.mail([msg.from.as_str()]).await.unwrap();
        let mail_refused = refused(&status);
        out.mail = Some(status);
        if mail_refused {
            conn.abort().await.unwrap();
            return out;
        }
        let n = next_message().to_string();
        for rcpt in &msg.rcpts {
            conn.macros(MacroStage::Rcpt, [("i", msg.queue_id.as_str())])
                .await
                .unwrap();
            out.rcpts
                .push(conn.rcpt([rcpt.replace("{n}", &n).as_str()]).await.unwrap());
        }
        if out.rcpts.iter().all(refused) {
            conn.abort().await.unwrap();
            return out;
        }
        let headers_negotiated = !conn.negotiated_opts().contains(ProtoOpts::NO_HEADER);
        if headers_negotiated {
            for (name, value) in &msg.headers {
                conn.header(name.as_str(), value.as_str()).await.unwrap();
            }
            let status = conn.eoh().await.unwrap();
            let eoh_refused = refused(&status);
            out.eoh = Some(status);
            if eoh_refused {
                conn.abort().await.unwrap();
                return out;
            }
        }
        if let Some(body) = &msg.body
            && !conn.negotiated_opts().contains(ProtoOpts::NO_BODY)
        {
            // Postfix sends the body in chunks of at most 64 KiB; the
            // milter may ask to skip the rest.
            for chunk in body.as_bytes().chunks(65_535) {
                if conn.body(chunk.to_vec()).await.unwrap() == Status::Skip {
                    break;
                }
            }
        }
        conn.macros(MacroStage::Eom, [("i", msg.queue_id.as_str())])
            .await
            .unwrap();
        let (actions, status) = conn.eom().await.unwrap();
        out.eom = Some(status);
        out.actions = Some(actions);
        out
    }

    /// MAIL and RCPT, then the client gives up (RSET/QUIT: the MTA aborts).
    pub async fn abandon_after_rcpt(&mut self, msg: &Msg) {
        let conn = &mut self.conn;
        let mut macros = vec![("i", msg.queue_id.as_str())];
        if let Some(auth) = &msg.auth {
            macros.push(("{auth_authen}", auth.as_str()));
        }
        conn.macros(MacroStage::Mail, macros).await.unwrap();
        assert_eq!(conn.mail([msg.from.as_str()]).await.unwrap(), Status::Continue);
        let n = next_message().to_string();
        for rcpt in &msg.rcpts {
            assert_eq!(
                conn.rcpt([rcpt.replace("{n}", &n).as_str()]).await.unwrap(),
                Status::Continue
            );
        }
        conn.abort().await.unwrap();
    }

    pub async fn close(self) {
        self.conn.close().await.unwrap();
    }
}

/// The daemon as the real binary, for signals, restarts and the CLI.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_egress-milter")
}

/// Runs `egress-milter --config PATH ARGS…` to completion.
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run egress-milter")
}

pub use ports::claim_port;

/// [`ports::free_port`], for tests that cannot go on without one.
pub fn free_port() -> u16 {
    ports::free_port().expect("a free loopback port")
}

impl Process {
    /// Starts `egress-milter run` on the config (whose socket must be
    /// `inet:127.0.0.1:PORT`) and waits until it accepts connections.
    pub async fn start(config: &Path, addr: SocketAddr) -> Process {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start egress-milter");
        let mut p = Process { child, addr, log };
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("egress-milter exited with {status} at start:\n{}", p.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "egress-milter did not start:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, as a crash or the OOM killer would, then waits until the
    /// process is gone (so nothing it still had in flight can land later).
    pub async fn kill(mut self) {
        let _ = self.child.kill();
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "egress-milter did not die");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "egress-milter did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
