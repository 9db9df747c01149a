// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private, throw-away Postfix instance for the live tests.
//!
//! Everything lives in one temporary directory (mode 0755 so that the
//! `postfix` user can reach the files it opens after dropping privileges):
//!
//! ```text
//! DIR/etc/main.cf, master.cf      written here; `postfix -c DIR/etc ...`
//! DIR/etc/sasl/smtpd.conf         Cyrus SASL config of the submission port
//! DIR/etc/sasl/sasldb2            its users (saslpasswd2 -f)
//! DIR/dovecot/                    with `.dovecot_sasl(..)` instead: a private
//!                                 Dovecot for SASL (see crate::dovecot), its
//!                                 socket at DIR/spool/private/auth
//! DIR/spool/                      queue_directory (hold, deferred, ...)
//! DIR/data/                       data_directory (created by Postfix)
//! DIR/maillog                     maillog_file, written by postlogd
//! ```
//!
//! The instance runs as root with `mail_owner = postfix`, without chroot, and
//! relays everything to `relayhost = [127.0.0.1]:SINK` (the suite's
//! [`crate::sink::SmtpSink`]). It has two front doors, both smtpd on
//! 127.0.0.1 with ports chosen at random:
//!
//! * the **submission** port: AUTH PLAIN/LOGIN against the sasldb users
//!   (logins `user@domain`), no TLS, relay only for authenticated clients.
//!   With [`PostfixOptions::dovecot_sasl`] the same users are checked by a
//!   private Dovecot instead (`smtpd_sasl_type = dovecot`).
//!   `{auth_authen}` reaches the milter (Postfix's default
//!   `milter_mail_macros`, also set by `conf/postfix/main.cf.milter`).
//! * the **relay** port: no AUTH; relay only for `mynetworks = 127.0.0.2/32`.
//!   The trusted upstream MTA is played by a client connecting *from*
//!   127.0.0.2 ([`TRUSTED_UPSTREAM`]); a client connecting from 127.0.0.1
//!   ([`UNTRUSTED_CLIENT`]) is refused relay (554 5.7.1). The milter under
//!   test is configured with `trusted_networks = ["127.0.0.2/32"]`, so it
//!   believes the identity header only from 127.0.0.2 as well.
//!
//! When a milter is given, the lines of `conf/postfix/main.cf.milter` (the
//! file the documentation tells admins to use) are appended to main.cf with
//! only the socket of `smtpd_milters` replaced, so the shipped snippet is
//! what the tests exercise. The milter then sees mail from both ports.
//!
//! Dropping the instance stops Postfix (`postfix abort`, then waits for the
//! master process to exit, killing it if it must) and deletes the directory,
//! also when a test panics; on a panic the end of the mail log is printed
//! first. Set `EGRESS_MILTER_LIVE_KEEP=1` to keep the directory.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::dovecot::{DOVECOT, DOVECOT_USERS, DovecotAuth};
use crate::egress::{poll_until, read_lossy, tail};
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// `postconf -c DIR ARGS...`: what Postfix reads from the configuration
/// files in `dir` (no instance needed); panics on any error or warning.
pub fn postconf_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(dir)
        .args(args)
        .output()
        .expect("run postconf (install Postfix with milter-tests/install-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && stderr.is_empty(), "postconf {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The admin-facing milter snippet, loaded into every instance with a milter.
pub const MAIN_CF_MILTER: &str = include_str!("../../conf/postfix/main.cf.milter");
/// The admin-facing master.cf lines of the pickup stamp, loaded into an
/// instance with [`PostfixOptions::local_submission`].
pub const MASTER_CF_LOCAL_SUBMISSION: &str = include_str!("../../conf/postfix/master.cf.local-submission");
/// The stamp's header_checks table.
pub const SUBMITTER_REGEXP: &str = include_str!("../../conf/postfix/egress-submitter.regexp");
/// Where master.cf.local-submission expects the table.
const SUBMITTER_REGEXP_PATH: &str = "/etc/postfix/egress-submitter.regexp";

/// Source address of the trusted upstream MTA: the only `mynetworks` entry.
pub const TRUSTED_UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Source address of ordinary, untrusted test clients.
pub const UNTRUSTED_CLIENT: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// `myhostname` of every instance.
pub const MYHOSTNAME: &str = "mta.egress-test.invalid";

/// Where Debian installs the Postfix commands.
const SBIN: &str = "/usr/sbin";
/// Longest wait for `postfix start` to have both ports listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the master process to exit after `postfix abort`.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Polling interval of every bounded wait here.
const POLL: Duration = Duration::from_millis(20);
/// Attempts at starting with fresh ports when one was taken in between.
const START_ATTEMPTS: usize = 3;

/// How to set up an instance. Build with [`PostfixOptions::new`] and the
/// chaining methods.
#[derive(Clone, Debug, Default)]
pub struct PostfixOptions {
    /// Port of the SMTP sink on 127.0.0.1 (the relayhost).
    pub sink_port: u16,
    /// Milter socket for `smtpd_milters`, such as `inet:127.0.0.1:7025` or
    /// `unix:/path`; `None` runs without a milter.
    pub milter: Option<String>,
    /// SASL users of the submission port: (login `user@domain`, password).
    pub sasl_users: Vec<(String, String)>,
    /// Extra main.cf lines, appended last (so they override earlier ones).
    pub main_cf: Vec<String>,
    /// Extra `-o name=value` overrides of the submission service.
    pub submission_overrides: Vec<String>,
    /// Extra `-o name=value` overrides of the relay service.
    pub relay_overrides: Vec<String>,
    /// The pickup stamp of `conf/postfix/master.cf.local-submission`.
    pub local_submission: bool,
    /// SASL through a private Dovecot with this `auth_default_realm`
    /// instead of Cyrus sasldb (`None`, the default).
    pub dovecot_realm: Option<String>,
}

impl PostfixOptions {
    /// Relays to the sink on `sink_port`; no milter, no users.
    pub fn new(sink_port: u16) -> PostfixOptions {
        PostfixOptions {
            sink_port,
            ..PostfixOptions::default()
        }
    }

    /// Uses the milter at `socket` (Postfix syntax: `inet:HOST:PORT`,
    /// `unix:PATH`).
    pub fn milter(mut self, socket: &str) -> PostfixOptions {
        self.milter = Some(socket.to_string());
        self
    }

    /// Adds a SASL user; `login` must be `user@domain`. Cyrus's sasldb or,
    /// with [`Self::dovecot_sasl`], Dovecot's passwd-file holds it.
    pub fn user(mut self, login: &str, password: &str) -> PostfixOptions {
        self.sasl_users.push((login.to_string(), password.to_string()));
        self
    }

    /// Appends a main.cf line such as `milter_default_action = accept`.
    pub fn main_cf(mut self, line: &str) -> PostfixOptions {
        self.main_cf.push(line.to_string());
        self
    }

    /// Adds `-o name=value` to the submission service.
    pub fn submission_override(mut self, name_value: &str) -> PostfixOptions {
        self.submission_overrides.push(name_value.to_string());
        self
    }

    /// Adds `-o name=value` to the relay service.
    pub fn relay_override(mut self, name_value: &str) -> PostfixOptions {
        self.relay_overrides.push(name_value.to_string());
        self
    }

    /// Replaces the pickup service with the lines of
    /// `conf/postfix/master.cf.local-submission` (pickup's own cleanup with
    /// the stamp of `egress-submitter.regexp`), unchrooted and with the
    /// table in the instance's `etc/`.
    pub fn local_submission(mut self) -> PostfixOptions {
        self.local_submission = true;
        self
    }

    /// SASL by a private Dovecot (crate::dovecot) instead of Cyrus: the
    /// users of [`Self::user`] in its passwd-file, `auth_default_realm =
    /// default_realm`, `auth_username_format = %Lu`, and in main.cf
    /// `smtpd_sasl_type = dovecot`, `smtpd_sasl_path = private/auth` (its
    /// socket in this instance's queue directory, as Postfix's SASL_README
    /// sets it up).
    pub fn dovecot_sasl(mut self, default_realm: &str) -> PostfixOptions {
        self.dovecot_realm = Some(default_realm.to_string());
        self
    }
}

/// One message in the queue, from `postqueue -j`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// `incoming`, `active`, `deferred`, `hold` (or `maildrop`).
    pub queue_name: String,
    /// Postfix queue ID.
    pub queue_id: String,
    /// Envelope sender (empty for the null sender).
    pub sender: String,
    /// Envelope recipients still to deliver.
    pub recipients: Vec<QueueRecipient>,
    /// Seconds since the epoch when the message arrived.
    pub arrival_time: u64,
    /// Size in bytes.
    pub message_size: u64,
}

/// One recipient of a [`QueueEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRecipient {
    /// Recipient address.
    pub address: String,
    /// Why delivery was delayed, if it was.
    pub delay_reason: Option<String>,
}

/// A running private Postfix. See the module documentation.
pub struct PostfixInstance {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    submission_port: u16,
    relay_port: u16,
    master_pid: Option<u32>,
    running: bool,
    dovecot: Option<DovecotAuth>,
}

impl PostfixInstance {
    /// Writes the configuration, starts Postfix and waits (bounded) until
    /// both smtpd ports listen. Errors say what is missing or what Postfix
    /// logged.
    pub fn start(opts: PostfixOptions) -> io::Result<PostfixInstance> {
        preflight(&opts)?;
        let dir = tempfile::Builder::new().prefix("egress-live-postfix-").tempdir()?;
        let root = dir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        fs::create_dir_all(root.join("etc/sasl"))?;
        fs::create_dir_all(root.join("spool"))?;
        fs::set_permissions(root.join("etc/sasl"), fs::Permissions::from_mode(0o755))?;
        let mut instance = PostfixInstance {
            dir: Some(dir),
            root,
            submission_port: 0,
            relay_port: 0,
            master_pid: None,
            running: false,
            dovecot: None,
        };
        match &opts.dovecot_realm {
            None => instance.write_sasl(&opts.sasl_users)?,
            Some(realm) => instance.start_dovecot(&opts.sasl_users, realm)?,
        }

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let [submission, relay] = free_ports()?;
            instance.submission_port = submission;
            instance.relay_port = relay;
            instance.write_config(&opts)?;
            let log_before = instance.log().len();
            let started = Instant::now();
            match instance.start_master() {
                Ok(()) => {
                    eprintln!(
                        "postfix: started in {:?} at {} (submission port {}, relay port {}, sink port {})",
                        started.elapsed(),
                        instance.root.display(),
                        submission,
                        relay,
                        opts.sink_port
                    );
                    return Ok(instance);
                }
                Err(err) => {
                    instance.abort_and_wait();
                    let log = instance.log();
                    let port_taken = log.get(log_before..).unwrap_or("").contains("Address already in use");
                    last_error = Some(err);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("postfix did not start")))
    }

    /// The instance directory (see the module documentation).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `config_directory`, for `postfix -c` and friends.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// `queue_directory`.
    pub fn queue_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    /// The mail log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("maillog")
    }

    /// The port of the authenticated submission service on 127.0.0.1.
    pub fn submission_port(&self) -> u16 {
        self.submission_port
    }

    /// The port of the relay service (trusts 127.0.0.2) on 127.0.0.1.
    pub fn relay_port(&self) -> u16 {
        self.relay_port
    }

    /// The private Dovecot of an instance with [`PostfixOptions::dovecot_sasl`].
    pub fn dovecot(&self) -> Option<&DovecotAuth> {
        self.dovecot.as_ref()
    }

    /// The PID of the running master process (from `spool/pid/master.pid`),
    /// to tell that Postfix was neither restarted nor reloaded.
    pub fn master_pid(&self) -> Option<u32> {
        self.master_pid
            .or_else(|| read_pid(&self.queue_dir().join("pid/master.pid")))
    }

    /// The mail log so far (empty if there is none yet).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The last `lines` lines of the mail log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Waits until the mail log contains `needle`; true if it did in time.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        poll_until(timeout, || self.log().contains(needle))
    }

    /// The main.cf text in use.
    pub fn main_cf(&self) -> io::Result<String> {
        fs::read_to_string(self.config_dir().join("main.cf"))
    }

    /// Runs `/usr/sbin/PROGRAM -c CONFIG_DIR ARGS...` and returns its
    /// standard output; an error (with stderr) unless it exits with 0.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let config_dir = self.config_dir();
        let mut all_args = vec![
            "-c",
            config_dir.to_str().ok_or_else(|| io::Error::other("non-UTF-8 path"))?,
        ];
        all_args.extend_from_slice(args);
        run_command(program, &all_args, None)
    }

    /// The value of a main.cf parameter as this instance sees it
    /// (`postconf -h NAME`).
    pub fn postconf(&self, name: &str) -> io::Result<String> {
        Ok(self.run("postconf", &["-h", name])?.trim_end().to_string())
    }

    /// Every message in the queue (`postqueue -j`).
    pub fn queue(&self) -> io::Result<Vec<QueueEntry>> {
        let out = self.run("postqueue", &["-j"])?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_queue_line)
            .collect()
    }

    /// The messages in one queue (`hold`, `deferred`, `active`, `incoming`).
    pub fn queue_named(&self, queue_name: &str) -> io::Result<Vec<QueueEntry>> {
        Ok(self
            .queue()?
            .into_iter()
            .filter(|e| e.queue_name == queue_name)
            .collect())
    }

    /// Waits until the queue is empty; Ok(true) if it was in time.
    pub fn wait_queue_empty(&self, timeout: Duration) -> io::Result<bool> {
        self.wait_for_queue(timeout, |q| q.is_empty()).map(|q| q.is_some())
    }

    /// Waits until `pred` holds for the queue; the queue then, or None on
    /// timeout.
    pub fn wait_for_queue(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[QueueEntry]) -> bool,
    ) -> io::Result<Option<Vec<QueueEntry>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let queue = self.queue()?;
            if pred(&queue) {
                return Ok(Some(queue));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }

    /// Releases every held message (`postsuper -H ALL`) and delivers it at
    /// once (`postqueue -f`: released mail lands in the deferred queue,
    /// which the queue manager would otherwise only scan minutes later).
    pub fn release_hold(&self) -> io::Result<()> {
        self.run("postsuper", &["-H", "ALL"])?;
        self.flush()
    }

    /// Puts every queued message on hold (`postsuper -h ALL`).
    pub fn hold_all(&self) -> io::Result<()> {
        self.run("postsuper", &["-h", "ALL"]).map(drop)
    }

    /// Deletes every queued message (`postsuper -d ALL`).
    pub fn delete_all(&self) -> io::Result<()> {
        self.run("postsuper", &["-d", "ALL"]).map(drop)
    }

    /// Retries deferred mail now (`postqueue -f`).
    pub fn flush(&self) -> io::Result<()> {
        self.run("postqueue", &["-f"]).map(drop)
    }

    /// Rereads main.cf and master.cf (`postfix reload`), after changing them
    /// with [`Self::set_main_cf`] for example.
    pub fn reload(&self) -> io::Result<()> {
        self.run("postfix", &["reload"]).map(drop)
    }

    /// Sets main.cf parameters (`postconf -e "name = value"` each); call
    /// [`Self::reload`] to apply them.
    pub fn set_main_cf(&self, lines: &[&str]) -> io::Result<()> {
        let mut args = vec!["-e"];
        args.extend_from_slice(lines);
        self.run("postconf", &args)?;
        backdate(&self.config_dir().join("main.cf"))
    }

    /// Stops Postfix now (`postfix abort`) and waits for the master to exit.
    /// Done by Drop too; explicit calls let a test restart with
    /// [`Self::restart`].
    pub fn stop(&mut self) {
        self.abort_and_wait();
    }

    /// Starts Postfix again after [`Self::stop`], with the same
    /// configuration, ports and queue.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.running {
            self.abort_and_wait();
        }
        self.start_master()
    }

    /// `postfix start`, then waits for the master's PID file and both ports.
    fn start_master(&mut self) -> io::Result<()> {
        self.running = true;
        self.master_pid = None;
        self.run("postfix", &["start"])
            .map_err(|e| io::Error::other(format!("postfix start failed: {e}\n{}", self.log_failure())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let ports = [self.submission_port, self.relay_port];
        let ready = poll_until(START_TIMEOUT, || {
            if self.master_pid.is_none() {
                self.master_pid = read_pid(&self.queue_dir().join("pid/master.pid"));
            }
            self.master_pid.is_some() && ports.iter().all(|&p| is_listening(p))
        });
        if !ready {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "postfix did not listen on ports {ports:?} within {START_TIMEOUT:?} (master pid {:?}, {:?} past \
                     deadline)\n{}",
                    self.master_pid,
                    Instant::now().saturating_duration_since(deadline),
                    self.log_failure()
                ),
            ));
        }
        Ok(())
    }

    /// Text for start failures: where the instance is, and its log.
    fn log_failure(&self) -> String {
        let tail = self.log_tail(40);
        if !tail.trim().is_empty() {
            return format!("--- {} (last 40 lines) ---\n{tail}\n---", self.log_path().display());
        }
        // Postfix commands write to stderr only when it is a terminal, and
        // errors found before logging is set up go to syslog (absent here):
        // run the start again on a pseudo-terminal (script(1)) to see them.
        let command = format!("{SBIN}/postfix -c '{}' start", self.config_dir().display());
        let on_tty = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
        let _ = self.run("postfix", &["abort"]);
        match on_tty {
            Ok(text) if !text.is_empty() => {
                format!(
                    "{} is empty; `{command}` on a terminal says:\n{text}",
                    self.log_path().display()
                )
            }
            _ => format!(
                "{} is empty: Postfix failed before it could log there; run `{command}` in a terminal to see why \
                 (EGRESS_MILTER_LIVE_KEEP=1 keeps the instance)",
                self.log_path().display()
            ),
        }
    }

    /// `postfix abort` (immediate stop), then waits for the master process to
    /// be gone, killing it if it outlives [`STOP_TIMEOUT`]. Never panics.
    fn abort_and_wait(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = self
            .master_pid
            .take()
            .or_else(|| read_pid(&self.queue_dir().join("pid/master.pid")));
        if let Err(err) = self.run("postfix", &["abort"]) {
            // Not running (start failed early) is fine; anything else is
            // worth a line in the test output.
            if pid.is_some() {
                eprintln!("postfix: abort in {} failed: {err}", self.root.display());
            }
        }
        let Some(pid) = pid else { return };
        if !poll_until(STOP_TIMEOUT, || !is_master_alive(pid)) {
            eprintln!("postfix: master {pid} still alive {STOP_TIMEOUT:?} after abort; killing it");
            let _ = run_command("/bin/kill", &["-KILL", &pid.to_string()], None);
            poll_until(STOP_TIMEOUT, || !is_master_alive(pid));
        }
    }

    fn write_sasl(&self, users: &[(String, String)]) -> io::Result<()> {
        let sasl_dir = self.config_dir().join("sasl");
        let sasldb = sasl_dir.join("sasldb2");
        // Debian's Postfix reads smtpd.conf from $config_directory/sasl and
        // ignores cyrus_sasl_config_path; upstream Postfix honours the
        // latter, which main.cf sets to the same directory.
        fs::write(
            sasl_dir.join("smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
                sasldb.display()
            ),
        )?;
        for (login, password) in users {
            let (user, domain) = login
                .rsplit_once('@')
                .filter(|(u, d)| !u.is_empty() && !d.is_empty())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("SASL login {login:?} must be user@domain"),
                    )
                })?;
            let sasldb = sasldb.to_str().ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
            run_command(
                "saslpasswd2",
                &["-f", sasldb, "-c", "-p", "-u", domain, user],
                Some(password),
            )?;
        }
        if sasldb.exists() {
            // smtpd opens it as the postfix user.
            fs::set_permissions(&sasldb, fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// Starts the private Dovecot with its auth socket at
    /// `spool/private/auth`. The `private/` directory is made here as
    /// `postfix start` would make it (owner `postfix`, mode 0700), so that
    /// the socket is there before smtpd's first AUTH.
    fn start_dovecot(&mut self, users: &[(String, String)], realm: &str) -> io::Result<()> {
        let private = self.queue_dir().join("private");
        fs::create_dir_all(&private)?;
        let postfix = nix::unistd::User::from_name("postfix")
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no user postfix"))?;
        std::os::unix::fs::chown(&private, Some(postfix.uid.as_raw()), Some(postfix.gid.as_raw()))?;
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700))?;
        let dovecot = DovecotAuth::start(&self.root.join("dovecot"), &private.join("auth"), users, realm)?;
        self.dovecot = Some(dovecot);
        Ok(())
    }

    fn write_config(&self, opts: &PostfixOptions) -> io::Result<()> {
        let etc = self.config_dir();
        fs::write(etc.join("main.cf"), main_cf(&self.root, opts)?)?;
        let mut master = master_cf(self.submission_port, self.relay_port, opts);
        if opts.local_submission {
            let table = etc.join("egress-submitter.regexp");
            fs::write(&table, SUBMITTER_REGEXP)?;
            master.push_str(&local_submission_services(&table)?);
        }
        fs::write(etc.join("master.cf"), master)?;
        backdate(&etc.join("main.cf"))?;
        backdate(&etc.join("master.cf"))
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "postfix: test failed; end of {} :\n{}\n(set EGRESS_MILTER_LIVE_KEEP=1 to keep the instance)",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        self.abort_and_wait();
        // After smtpd is gone; prints its log too on a panic.
        drop(self.dovecot.take());
        if std::env::var("EGRESS_MILTER_LIVE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("postfix: kept {}", dir.keep().display());
        }
    }
}

/// Checks root and the commands before touching anything.
fn preflight(opts: &PostfixOptions) -> io::Result<()> {
    let hint = "run `bash milter-tests/install-deps.sh` as root";
    for program in ["postfix", "postconf", "postqueue", "postsuper"] {
        if !Path::new(SBIN).join(program).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{SBIN}/{program} not found: {hint}"),
            ));
        }
    }
    if !opts.sasl_users.is_empty() && opts.dovecot_realm.is_none() && !Path::new(SBIN).join("saslpasswd2").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{SBIN}/saslpasswd2 not found: {hint}"),
        ));
    }
    if opts.dovecot_realm.is_some() {
        if !Path::new(DOVECOT).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{DOVECOT} not found (package dovecot-core): {hint}"),
            ));
        }
        for user in DOVECOT_USERS {
            if nix::unistd::User::from_name(user).ok().flatten().is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no user {user} (dovecot-core's postinst makes it): {hint}"),
                ));
            }
        }
    }
    if effective_uid()? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the live-MTA tests must run as root (Postfix's master runs as root and switches to the postfix user)",
        ));
    }
    if opts.sink_port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "PostfixOptions::sink_port is 0",
        ));
    }
    Ok(())
}

/// The main.cf of an instance rooted at `root`.
fn main_cf(root: &Path, opts: &PostfixOptions) -> io::Result<String> {
    let root = root.display();
    let mut cf = format!(
        "\
# Written by the egress-milter live-test harness (milter-tests/live/postfix.rs).
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {MYHOSTNAME}
mydomain = egress-test.invalid
myorigin = $myhostname
# Nothing is delivered locally: everything goes to the sink.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
# The trusted upstream MTA connects from 127.0.0.2 (relay port only).
mynetworks = {trusted}/32
relayhost = [127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
{sasl}smtpd_sasl_security_options = noanonymous
# Tests provoke many refusals: no tarpitting, no error-count disconnects.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
",
        trusted = TRUSTED_UPSTREAM,
        sink = opts.sink_port,
        sasl = match &opts.dovecot_realm {
            None => format!(
                "\
# Cyrus SASL with a sasldb of the instance (see etc/sasl/smtpd.conf).
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {root}/etc/sasl
# Empty: logins are user@domain and that realm is looked up as given.
smtpd_sasl_local_domain =
"
            ),
            Some(realm) => format!(
                "\
# Dovecot SASL: the instance's private Dovecot (dovecot/dovecot.conf,
# auth_default_realm = {realm}), its socket relative to queue_directory.
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
"
            ),
        },
    );
    if let Some(socket) = &opts.milter {
        cf.push_str("\n# --- conf/postfix/main.cf.milter, socket replaced ---\n");
        cf.push_str(&milter_snippet(socket)?);
    }
    if !opts.main_cf.is_empty() {
        // Comment out what the test's lines override: Postfix would use the
        // last value anyway, but warn about it on every command.
        let overridden: Vec<&str> = opts.main_cf.iter().filter_map(|l| parameter_name(l)).collect();
        cf = cf
            .lines()
            .map(|line| match parameter_name(line) {
                Some(name) if overridden.contains(&name) => format!("# (overridden below) {line}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        cf.push_str("\n# --- extra lines of the test ---\n");
        for line in &opts.main_cf {
            cf.push_str(line);
            cf.push('\n');
        }
    }
    Ok(cf)
}

/// The parameter a main.cf line sets (`name = value`), if it sets one.
fn parameter_name(line: &str) -> Option<&str> {
    if line.starts_with(['#', ' ', '\t']) {
        return None;
    }
    let name = line.split_once('=')?.0.trim();
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(name)
}

/// conf/postfix/main.cf.milter with the values of `smtpd_milters` and
/// `non_smtpd_milters` replaced by `socket`. Fails if the file no longer
/// sets each exactly once.
pub fn milter_snippet(socket: &str) -> io::Result<String> {
    let mut out = String::new();
    let mut replaced = [0, 0];
    for line in MAIN_CF_MILTER.lines() {
        match parameter_name(line) {
            Some(name @ ("smtpd_milters" | "non_smtpd_milters")) => {
                out.push_str(&format!("{name} = {socket}\n"));
                replaced[usize::from(name == "non_smtpd_milters")] += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if replaced != [1, 1] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "conf/postfix/main.cf.milter must set smtpd_milters and non_smtpd_milters exactly once each (found {} and {})",
                replaced[0], replaced[1]
            ),
        ));
    }
    Ok(out)
}

/// The services of conf/postfix/master.cf.local-submission, for an
/// instance: not chrooted (the instance's paths are not inside its queue
/// directory), with the stamp's table at `table`.
fn local_submission_services(table: &Path) -> io::Result<String> {
    let table = table.to_str().ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
    let mut out = String::from("# --- conf/postfix/master.cf.local-submission, unchrooted, table path replaced ---\n");
    let mut services = 0;
    for line in MASTER_CF_LOCAL_SUBMISSION.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            out.push_str(&line.replace(SUBMITTER_REGEXP_PATH, table));
        } else {
            // service type private unpriv chroot ...: chroot is the 5th column.
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("master.cf.local-submission: not a service line: {line:?}"),
                ));
            }
            fields[4] = "n";
            out.push_str(&fields.join(" "));
            services += 1;
        }
        out.push('\n');
    }
    if services != 2 || !out.contains(table) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("master.cf.local-submission must define pickup and egress-cleanup with {SUBMITTER_REGEXP_PATH}"),
        ));
    }
    Ok(out)
}

/// The master.cf: the two smtpd front doors and Postfix's standard services,
/// none chrooted.
fn master_cf(submission_port: u16, relay_port: u16, opts: &PostfixOptions) -> String {
    let overrides = |list: &[String]| list.iter().map(|o| format!("  -o {o}\n")).collect::<String>();
    format!(
        "\
# Written by the egress-milter live-test harness (milter-tests/live/postfix.rs).
# service type  private unpriv  chroot  wakeup  maxproc command + args
# Submission: SASL AUTH required to relay.
127.0.0.1:{submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
{submission_extra}\
# Relay: no AUTH; only the trusted upstream MTA (mynetworks, 127.0.0.2) may relay.
127.0.0.1:{relay_port} inet n - n - - smtpd
  -o syslog_name=postfix/relay
  -o smtpd_sasl_auth_enable=no
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
{relay_extra}\
{pickup}\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
",
        submission_extra = overrides(&opts.submission_overrides),
        relay_extra = overrides(&opts.relay_overrides),
        // With the stamp, pickup is defined by master.cf.local-submission.
        pickup = if opts.local_submission {
            ""
        } else {
            "pickup    unix  n       -       n       60      1       pickup\n"
        },
    )
}

/// Sets the modification time of a file a minute into the past. Postfix
/// will not read a main.cf modified within the last second or so: each
/// command waits (about 2.5 s) for it to "settle", which is most of the
/// start-up time of a fresh instance.
fn backdate(path: &Path) -> io::Result<()> {
    let past = SystemTime::now() - Duration::from_secs(60);
    fs::File::options().write(true).open(path)?.set_modified(past)
}

/// Runs a command (from /usr/sbin when the name has no slash), feeding
/// `stdin` if given; its stdout, or an error with its stderr.
fn run_command(program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        Path::new(SBIN).join(program)
    };
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", path.display())))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().ok_or_else(|| io::Error::other("no stdin pipe"))?;
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{} {}` failed ({}): {}{}",
            path.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        )));
    }
    Ok(stdout)
}

/// Two distinct free ports on 127.0.0.1, chosen by the kernel. They are free
/// when this returns; a race with another process is handled by retrying the
/// start.
fn free_ports() -> io::Result<[u16; 2]> {
    Ok([crate::egress::free_port()?, crate::egress::free_port()?])
}

/// Whether something listens on 127.0.0.1:`port` (or 0.0.0.0), from
/// /proc/net/tcp. Checked this way rather than by connecting, because a
/// probe connection would reach smtpd, and through it the milter under test.
pub fn is_listening(port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            return false;
        };
        let Some((addr, hex_port)) = local.split_once(':') else {
            return false;
        };
        *state == "0A"
            && matches!(addr, "0100007F" | "00000000")
            && u16::from_str_radix(hex_port, 16).is_ok_and(|p| p == port)
    })
}

/// The PID in a Postfix PID file (space-padded).
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) Postfix master process.
fn is_master_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (comm) STATE ...": comm may contain spaces, so split at the last ')'.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    head.ends_with("(master") && !tail.trim_start().starts_with(['Z', 'X'])
}

/// The effective user ID, from /proc/self/status.
pub fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read the effective UID from /proc/self/status"))
}

/// Parses one line of `postqueue -j` output.
pub fn parse_queue_line(line: &str) -> io::Result<QueueEntry> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("postqueue -j: {what} in {line:?}"));
    let value = json::parse(line).map_err(|e| bad(&e))?;
    let text = |key: &str| value.get(key).and_then(json::Value::as_str).map(str::to_string);
    let number = |key: &str| value.get(key).and_then(json::Value::as_u64).unwrap_or(0);
    let recipients = value
        .get("recipients")
        .and_then(json::Value::as_array)
        .ok_or_else(|| bad("no recipients array"))?
        .iter()
        .map(|r| {
            Ok(QueueRecipient {
                address: r
                    .get("address")
                    .and_then(json::Value::as_str)
                    .ok_or_else(|| bad("recipient without address"))?
                    .to_string(),
                delay_reason: r.get("delay_reason").and_then(json::Value::as_str).map(str::to_string),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(QueueEntry {
        queue_name: text("queue_name").ok_or_else(|| bad("no queue_name"))?,
        queue_id: text("queue_id").ok_or_else(|| bad("no queue_id"))?,
        sender: text("sender").ok_or_else(|| bad("no sender"))?,
        recipients,
        arrival_time: number("arrival_time"),
        message_size: number("message_size"),
    })
}

/// Just enough JSON for `postqueue -j`: a complete, strict parser of one
/// value (no serde_json among the dependencies).
mod json {
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }

        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
                _ => None,
            }
        }

        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Array(items) => Some(items),
                _ => None,
            }
        }
    }

    /// Parses a whole document holding one value.
    pub fn parse(text: &str) -> Result<Value, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
            depth: 0,
        };
        let value = parser.value()?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            return Err(format!("trailing characters at byte {}", parser.pos));
        }
        Ok(value)
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        pos: usize,
        depth: usize,
    }

    impl Parser<'_> {
        fn skip_ws(&mut self) {
            while self.bytes.get(self.pos).is_some_and(|b| b" \t\r\n".contains(b)) {
                self.pos += 1;
            }
        }

        fn err<T>(&self, what: &str) -> Result<T, String> {
            Err(format!("{what} at byte {}", self.pos))
        }

        fn eat(&mut self, byte: u8) -> Result<(), String> {
            self.skip_ws();
            if self.bytes.get(self.pos) == Some(&byte) {
                self.pos += 1;
                Ok(())
            } else {
                self.err(&format!("expected '{}'", byte as char))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.skip_ws();
            self.depth += 1;
            if self.depth > 64 {
                return self.err("nesting too deep");
            }
            let value = match self.bytes.get(self.pos) {
                Some(b'{') => self.object(),
                Some(b'[') => self.array(),
                Some(b'"') => self.string().map(Value::String),
                Some(b't') => self.literal("true", Value::Bool(true)),
                Some(b'f') => self.literal("false", Value::Bool(false)),
                Some(b'n') => self.literal("null", Value::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => self.err("expected a value"),
            };
            self.depth -= 1;
            value
        }

        fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
            if self.bytes[self.pos..].starts_with(word.as_bytes()) {
                self.pos += word.len();
                Ok(value)
            } else {
                self.err("bad literal")
            }
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.pos;
            while self.bytes.get(self.pos).is_some_and(|b| b"+-.eE0123456789".contains(b)) {
                self.pos += 1;
            }
            let text = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|e| e.to_string())?;
            text.parse().map(Value::Number).or_else(|_| self.err("bad number"))
        }

        fn object(&mut self) -> Result<Value, String> {
            self.eat(b'{')?;
            let mut members = Vec::new();
            self.skip_ws();
            if self.bytes.get(self.pos) == Some(&b'}') {
                self.pos += 1;
                return Ok(Value::Object(members));
            }
            loop {
                self.skip_ws();
                let key = self.string()?;
                self.eat(b':')?;
                members.push((key, self.value()?));
                self.skip_ws();
                match self.bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        return Ok(Value::Object(members));
                    }
                    _ => return self.err("expected ',' or '}'"),
                }
            }
        }

        fn array(&mut self) -> Result<Value, String> {
            self.eat(b'[')?;
            let mut items = Vec::new();
            self.skip_ws();
            if self.bytes.get(self.pos) == Some(&b']') {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            loop {
                items.push(self.value()?);
                self.skip_ws();
                match self.bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        return Ok(Value::Array(items));
                    }
                    _ => return self.err("expected ',' or ']'"),
                }
            }
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let digits = self.bytes.get(self.pos..self.pos + 4).ok_or("truncated \\u escape")?;
            let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
            let code = u32::from_str_radix(text, 16).or_else(|_| self.err("bad \\u escape"))?;
            self.pos += 4;
            Ok(code)
        }

        fn string(&mut self) -> Result<String, String> {
            if self.bytes.get(self.pos) != Some(&b'"') {
                return self.err("expected a string");
            }
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                let Some(&byte) = self.bytes.get(self.pos) else {
                    return self.err("unterminated string");
                };
                self.pos += 1;
                match byte {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b'\\' => {
                        let Some(&escape) = self.bytes.get(self.pos) else {
                            return self.err("truncated escape");
                        };
                        self.pos += 1;
                        let ch = match escape {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let high = self.hex4()?;
                                let code =
                                    if (0xD800..0xDC00).contains(&high) && self.bytes[self.pos..].starts_with(b"\\u") {
                                        self.pos += 2;
                                        let low = self.hex4()?;
                                        if !(0xDC00..0xE000).contains(&low) {
                                            return self.err("bad surrogate pair");
                                        }
                                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                                    } else {
                                        high
                                    };
                                char::from_u32(code).unwrap_or('\u{FFFD}')
                            }
                            _ => return self.err("bad escape"),
                        };
                        let mut buf = [0; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    0x00..=0x1f => return self.err("control character in string"),
                    _ => out.push(byte),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postqueue_json_lines() {
        let line = r#"{"queue_name": "deferred", "queue_id": "09AA7990109", "arrival_time": 1795401785, "message_size": 338, "forced_expire": false, "sender": "alice@example.com", "recipients": [{"address": "bob@remote.test", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:39999: Connection refused"}, {"address": "q\"u\u00e9@x.test"}]}"#;
        let entry = parse_queue_line(line).expect("parse");
        assert_eq!(entry.queue_name, "deferred");
        assert_eq!(entry.queue_id, "09AA7990109");
        assert_eq!(entry.sender, "alice@example.com");
        assert_eq!(entry.arrival_time, 1795401785);
        assert_eq!(entry.message_size, 338);
        assert_eq!(entry.recipients.len(), 2);
        assert_eq!(entry.recipients[0].address, "bob@remote.test");
        assert!(
            entry.recipients[0]
                .delay_reason
                .as_deref()
                .is_some_and(|r| r.contains("Connection refused"))
        );
        assert_eq!(entry.recipients[1].address, "q\"ué@x.test");
        assert_eq!(entry.recipients[1].delay_reason, None);

        let held = r#"{"queue_name": "hold", "queue_id": "A1", "arrival_time": 1, "message_size": 2, "forced_expire": false, "sender": "", "recipients": [{"address": "r@x.test"}]}"#;
        let entry = parse_queue_line(held).expect("parse");
        assert_eq!((entry.queue_name.as_str(), entry.sender.as_str()), ("hold", ""));

        assert!(parse_queue_line("{\"queue_name\": \"hold\"").is_err());
        assert!(parse_queue_line("not json").is_err());
        assert!(parse_queue_line(r#"{"queue_name": "hold", "queue_id": "A1", "sender": ""}"#).is_err());
    }

    #[test]
    fn json_handles_escapes_and_nesting() {
        let value =
            json::parse(r#" {"a": [1, -2.5e3, true, null, {"b": "\ud83d\ude00\n"}], "c": {}} "#).expect("parse");
        let items = value.get("a").and_then(json::Value::as_array).expect("array");
        assert_eq!(items[0].as_u64(), Some(1));
        assert_eq!(items[1], json::Value::Number(-2500.0));
        assert_eq!(items[4].get("b").and_then(json::Value::as_str), Some("😀\n"));
        assert!(json::parse("[1,]").is_err());
        assert!(json::parse("\"\u{1}\"").is_err());
        assert!(json::parse(&"[".repeat(100)).is_err());
    }

    #[test]
    fn milter_snippet_replaces_only_the_socket() {
        let snippet = milter_snippet("unix:/run/egress/milter.sock").expect("snippet");
        assert!(
            snippet
                .lines()
                .any(|l| l == "smtpd_milters = unix:/run/egress/milter.sock")
        );
        assert!(
            !snippet
                .lines()
                .any(|l| l == "smtpd_milters = unix:/egress-milter/milter.sock")
        );
        assert!(
            snippet
                .lines()
                .any(|l| l == "non_smtpd_milters = unix:/run/egress/milter.sock")
        );
        for needed in [
            "milter_protocol = 6",
            "milter_default_action = tempfail",
            "milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
        ] {
            assert!(snippet.lines().any(|l| l == needed), "main.cf.milter lacks {needed:?}");
        }
        let cf = main_cf(
            Path::new("/x"),
            &PostfixOptions::new(2525).milter("inet:127.0.0.1:1").main_cf("a = b"),
        )
        .expect("main.cf");
        assert!(cf.contains("relayhost = [127.0.0.1]:2525\n"));
        assert!(cf.contains("mynetworks = 127.0.0.2/32\n"));
        assert!(cf.ends_with("a = b\n"));
        let cf = main_cf(
            Path::new("/x"),
            &PostfixOptions::new(1).main_cf("milter_default_action = accept"),
        )
        .expect("main.cf");
        assert_eq!(cf.matches("\nmilter_default_action =").count(), 1, "{cf}");
        let cf = main_cf(
            Path::new("/x"),
            &PostfixOptions::new(1)
                .milter("inet:127.0.0.1:1")
                .main_cf("milter_default_action=accept"),
        )
        .expect("main.cf");
        assert!(
            cf.contains("# (overridden below) milter_default_action = tempfail\n"),
            "{cf}"
        );
        assert!(cf.ends_with("\nmilter_default_action=accept\n"), "{cf}");
    }

    #[test]
    fn dovecot_sasl_replaces_the_cyrus_lines() {
        let cyrus = main_cf(Path::new("/x"), &PostfixOptions::new(1)).expect("main.cf");
        assert!(cyrus.contains("\nsmtpd_sasl_type = cyrus\n"), "{cyrus}");
        let dovecot = main_cf(Path::new("/x"), &PostfixOptions::new(1).dovecot_sasl("example.com")).expect("main.cf");
        assert!(
            dovecot.contains("\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = private/auth\n"),
            "{dovecot}"
        );
        assert!(!dovecot.contains("cyrus"), "{dovecot}");
        assert!(!dovecot.contains("smtpd_sasl_local_domain"), "{dovecot}");
    }

    #[test]
    fn local_submission_services_come_from_the_shipped_file() {
        let services = local_submission_services(Path::new("/x/etc/egress-submitter.regexp")).expect("services");
        assert!(services.contains("\npickup unix n - n 60 1 pickup\n"), "{services}");
        assert!(
            services.contains("\negress-cleanup unix n - n - 0 cleanup\n"),
            "{services}"
        );
        assert!(
            services.contains("  -o header_checks=regexp:/x/etc/egress-submitter.regexp\n"),
            "{services}"
        );
        let master = master_cf(1, 2, &PostfixOptions::new(3).local_submission());
        assert!(!master.contains("pickup    unix"), "{master}");
    }

    #[test]
    fn listening_check_reads_proc() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(is_listening(port));
        // A port in use but not listening (the client end of a connection).
        let client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        assert!(!is_listening(client.local_addr().expect("addr").port()));
    }
}
