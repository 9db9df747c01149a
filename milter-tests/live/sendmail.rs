// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A private, throw-away Sendmail instance for the live tests.
//!
//! Debian's `sendmail-bin` conflicts with `postfix` (both provide
//! `mail-transport-agent`), so Sendmail is not installed as a package here:
//! `milter-tests/install-deps.sh` unpacks Debian's `sendmail-bin`,
//! `sendmail-base` and `sendmail-cf` into a private root,
//! `/opt/egress-milter-tests/sendmail-root` (or `$EGRESS_MILTER_SENDMAIL_ROOT`),
//! and installs only their shared libraries and `m4`.
//!
//! Each instance lives in one directory under `/run/egress-milter-tests/`
//! (Sendmail refuses to build its alias database below a world-writable
//! directory such as `/tmp`):
//!
//! ```text
//! DIR/etc/sendmail.mc      written here, from conf/sendmail/egress-milter.mc
//! DIR/etc/sendmail.cf      built from it with m4 and sendmail-cf's cf.m4
//! DIR/etc/aliases(.db)     empty; MAIL_SETTINGS_DIR is DIR/etc/
//! DIR/etc/hosts            127.0.0.1 mta.egress-test.invalid localhost
//! DIR/etc/resolv.conf      nameserver 127.0.0.1
//! DIR/sasl/Sendmail.conf   Cyrus SASL config (auxprop sasldb)
//! DIR/sasl/sasldb2         its users (saslpasswd2 -f)
//! DIR/mqueue/              QUEUE_DIR: qf/df files, hf for quarantined mail
//! DIR/traffic.log          `sendmail -X`: every SMTP line in and out
//! DIR/sendmail.out         the daemon's stdout and stderr
//! ```
//!
//! Sendmail logs to syslog only, and a test machine may have none: the SMTP
//! transcript of `-X` is the log of an instance. It listens on one port of
//! 127.0.0.1 (AUTH PLAIN/LOGIN against the sasldb users, no TLS) and relays
//! everything to `SMART_HOST` `[127.0.0.1]` on the sink's port.
//!
//! Every `sendmail` command of an instance runs in private mount and UTS
//! namespaces (`unshare --mount --uts`), in which
//!
//! * the host name is `mta.egress-test.invalid` and `/etc/hosts` maps it to
//!   127.0.0.1: Sendmail qualifies its host name before it reads its
//!   configuration, through the resolver, and sleeps a minute when it
//!   cannot;
//! * `/etc/resolv.conf` says `nameserver 127.0.0.1`: any DNS query Sendmail
//!   still makes goes to loopback, never to the machine's resolver;
//! * `DIR/sasl` is mounted over the directories of Cyrus SASL's
//!   configuration path (`/etc/sasl2`, `/etc/sasl`, `/usr/lib/sasl2`, those
//!   that exist). Sendmail clears its environment at start, so
//!   `SASL_CONF_PATH` cannot point it at `Sendmail.conf`, and it has no
//!   option of its own for that path.
//!
//! Nothing outside the namespaces sees these mounts. Dropping the instance
//! stops Sendmail (SIGTERM to its process group, SIGKILL after a bound) and
//! deletes the directory, also when a test panics; on a panic the end of
//! the transcript is printed first. Set `EGRESS_MILTER_LIVE_KEEP=1` to keep
//! the directory.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::egress::{free_port, poll_until, read_lossy, tail};
use crate::postfix::{MYHOSTNAME, effective_uid, is_listening};
use crate::sink::SmtpSink;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The admin-facing milter lines, loaded into every instance with a milter.
pub const MILTER_MC: &str = include_str!("../../conf/sendmail/egress-milter.mc");

/// Where install-deps.sh unpacks Sendmail, unless [`SENDMAIL_ROOT_ENV`] says
/// otherwise.
pub const DEFAULT_SENDMAIL_ROOT: &str = "/opt/egress-milter-tests/sendmail-root";
/// Overrides [`DEFAULT_SENDMAIL_ROOT`] (the script reads it too).
pub const SENDMAIL_ROOT_ENV: &str = "EGRESS_MILTER_SENDMAIL_ROOT";
/// Parent of the instance directories: root-owned and not world-writable,
/// as Sendmail's file-safety checks demand of every directory on a path.
pub const INSTANCE_BASE: &str = "/run/egress-milter-tests";

/// Directories of Cyrus SASL's default configuration path on Debian
/// (`/etc/sasl2:/etc/sasl:/usr/lib/x86_64-linux-gnu/sasl2:/usr/lib/sasl2`),
/// without the plugin directory.
const SASL_CONF_DIRS: [&str; 3] = ["/etc/sasl2", "/etc/sasl", "/usr/lib/sasl2"];
/// Longest wait for the daemon to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the daemon to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Polling interval of every bounded wait here.
const POLL: Duration = Duration::from_millis(20);
/// Attempts at starting with a fresh port when one was taken in between.
const START_ATTEMPTS: usize = 3;
/// The hint in every "missing" error.
const HINT: &str = "run `bash milter-tests/install-deps.sh` as root";

/// The private Sendmail root: `$EGRESS_MILTER_SENDMAIL_ROOT` or
/// [`DEFAULT_SENDMAIL_ROOT`].
pub fn sendmail_root() -> PathBuf {
    std::env::var_os(SENDMAIL_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SENDMAIL_ROOT), PathBuf::from)
}

/// How to set up an instance. Build with [`SendmailOptions::new`] and the
/// chaining methods.
#[derive(Clone, Debug, Default)]
pub struct SendmailOptions {
    /// Port of the SMTP sink on 127.0.0.1 (the smart host).
    pub sink_port: u16,
    /// Milter socket in Sendmail's notation (`inet:PORT@127.0.0.1`,
    /// `local:/path`); `None` runs without a milter.
    pub milter: Option<String>,
    /// SASL users: (login `user@domain`, password).
    pub sasl_users: Vec<(String, String)>,
    /// Extra .mc lines, inserted before `MAILER(`smtp')`.
    pub mc: Vec<String>,
}

impl SendmailOptions {
    /// Relays to the sink on `sink_port`; no milter, no users.
    pub fn new(sink_port: u16) -> SendmailOptions {
        SendmailOptions {
            sink_port,
            ..SendmailOptions::default()
        }
    }

    /// Uses the milter at `socket` (Sendmail notation).
    pub fn milter(mut self, socket: &str) -> SendmailOptions {
        self.milter = Some(socket.to_string());
        self
    }

    /// Uses the milter listening on 127.0.0.1:`port`.
    pub fn milter_port(self, port: u16) -> SendmailOptions {
        self.milter(&format!("inet:{port}@127.0.0.1"))
    }

    /// Adds a SASL user; `login` must be `user@domain`.
    pub fn user(mut self, login: &str, password: &str) -> SendmailOptions {
        self.sasl_users.push((login.to_string(), password.to_string()));
        self
    }

    /// Adds an .mc line such as ``define(`confLOG_LEVEL', `20')dnl``.
    pub fn mc(mut self, line: &str) -> SendmailOptions {
        self.mc.push(line.to_string());
        self
    }
}

/// One file in the queue directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueFile {
    /// `qf` (control file), `hf` (control file of a quarantined message),
    /// `df` (body), `tf`/`xf` (temporary, transcript), `Qf` (lost).
    pub kind: String,
    /// The queue ID.
    pub queue_id: String,
}

/// A running private Sendmail. See the module documentation.
pub struct SendmailInstance {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    sendmail_root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl SendmailInstance {
    /// Writes the configuration, builds sendmail.cf, starts the daemon and
    /// waits (bounded) until it listens. Errors say what is missing or what
    /// Sendmail said.
    pub fn start(opts: SendmailOptions) -> io::Result<SendmailInstance> {
        let sendmail_root = sendmail_root();
        preflight(&sendmail_root, &opts)?;
        if !Path::new(INSTANCE_BASE).is_dir() {
            fs::create_dir_all(INSTANCE_BASE)?;
            fs::set_permissions(INSTANCE_BASE, fs::Permissions::from_mode(0o755))?;
        }
        let dir = tempfile::Builder::new().prefix("sendmail-").tempdir_in(INSTANCE_BASE)?;
        let root = dir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        for sub in ["etc", "sasl", "mqueue"] {
            fs::create_dir(root.join(sub))?;
        }
        fs::set_permissions(root.join("mqueue"), fs::Permissions::from_mode(0o700))?;
        let mut instance = SendmailInstance {
            dir: Some(dir),
            root,
            sendmail_root,
            port: 0,
            child: None,
        };
        instance.write_static_files()?;
        instance.write_sasl(&opts.sasl_users)?;

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            instance.port = free_port()?;
            instance.write_config(&opts)?;
            let started = Instant::now();
            match instance.start_daemon() {
                Ok(()) => {
                    eprintln!(
                        "sendmail: started in {:?} at {} (port {}, sink port {})",
                        started.elapsed(),
                        instance.root.display(),
                        instance.port,
                        opts.sink_port
                    );
                    return Ok(instance);
                }
                Err(err) => {
                    instance.stop();
                    let taken = instance.output().contains("Address already in use");
                    last_error = Some(err);
                    if !taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("sendmail did not start")))
    }

    /// The instance directory (see the module documentation).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The SMTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sendmail.cf in use.
    pub fn cf_path(&self) -> PathBuf {
        self.root.join("etc/sendmail.cf")
    }

    /// The .mc it was built from.
    pub fn mc(&self) -> io::Result<String> {
        fs::read_to_string(self.root.join("etc/sendmail.mc"))
    }

    /// QUEUE_DIR.
    pub fn queue_dir(&self) -> PathBuf {
        self.root.join("mqueue")
    }

    /// The SMTP transcript (`-X`) so far.
    pub fn traffic(&self) -> String {
        read_lossy(&self.root.join("traffic.log"))
    }

    /// The last `lines` lines of the transcript.
    pub fn traffic_tail(&self, lines: usize) -> String {
        tail(&self.traffic(), lines)
    }

    /// What the daemon wrote to stdout and stderr.
    pub fn output(&self) -> String {
        read_lossy(&self.root.join("sendmail.out"))
    }

    /// The PID of the daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `sendmail -C DIR/etc/sendmail.cf ARGS...` command inside the
    /// instance's namespaces (see the module documentation).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--uts", "--", "/bin/sh", "-c", NAMESPACE_SCRIPT, "sh"])
            .arg(MYHOSTNAME)
            .arg(self.root.join("etc/hosts"))
            .arg(self.root.join("etc/resolv.conf"))
            .arg(self.root.join("sasl"))
            .arg(self.sendmail_root.join("usr/libexec/sendmail/sendmail"))
            .arg("-C")
            .arg(self.cf_path())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sendmail -C CF ARGS...` (as [`Self::command`]) and returns its
    /// standard output; an error with stderr unless it exits with 0.
    pub fn run(&self, args: &[&str]) -> io::Result<String> {
        let out = self.command(args).output()?;
        checked("sendmail", args, out)
    }

    /// `mailq` (`sendmail -bp`) with extra arguments such as `-qQ`.
    pub fn mailq(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-bp"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Runs the queue once, in the foreground (`sendmail -q`).
    pub fn run_queue(&self) -> io::Result<()> {
        self.run(&["-q"]).map(drop)
    }

    /// The files in the queue directory, sorted.
    pub fn queue_files(&self) -> io::Result<Vec<QueueFile>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(self.queue_dir())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.len() > 2 && name.is_char_boundary(2) {
                let (kind, id) = name.split_at(2);
                files.push(QueueFile {
                    kind: kind.to_string(),
                    queue_id: id.to_string(),
                });
            }
        }
        files.sort();
        Ok(files)
    }

    /// Queue IDs with a file of `kind` (`qf`: queued, `hf`: quarantined).
    pub fn queue_ids(&self, kind: &str) -> io::Result<Vec<String>> {
        Ok(self
            .queue_files()?
            .into_iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.queue_id)
            .collect())
    }

    /// Waits until `pred` holds for the queue files; them then, or None on
    /// timeout.
    pub fn wait_for_queue(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[QueueFile]) -> bool,
    ) -> io::Result<Option<Vec<QueueFile>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.queue_files()?;
            if pred(&files) {
                return Ok(Some(files));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }

    /// Waits until the queue directory holds no control file (no qf, hf or
    /// tf); Ok(true) if it did in time.
    pub fn wait_queue_empty(&self, timeout: Duration) -> io::Result<bool> {
        self.wait_for_queue(timeout, |files| {
            !files.iter().any(|f| matches!(f.kind.as_str(), "qf" | "hf" | "tf"))
        })
        .map(|files| files.is_some())
    }

    /// Stops the daemon: SIGTERM to its process group (the daemon passes it
    /// on to its children), SIGKILL to the group if the daemon outlives
    /// [`STOP_TIMEOUT`]. Done by Drop too. Never panics.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("/bin/kill").args(["-TERM", "--", &group]).output();
        if !poll_until(STOP_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))) {
            eprintln!(
                "sendmail: daemon {} still alive {STOP_TIMEOUT:?} after SIGTERM; killing its group",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        // Children that were mid-delivery die with the group.
        let _ = Command::new("/bin/kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .output();
    }

    /// Starts the daemon (`-bD`: in the foreground, so that it stays this
    /// process's child) in a process group of its own, then waits for its
    /// port.
    fn start_daemon(&mut self) -> io::Result<()> {
        let out = fs::File::create(self.root.join("sendmail.out"))?;
        let traffic = self.root.join("traffic.log");
        let traffic = traffic.to_str().ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
        let child = self
            .command(&["-bD", "-q1m", "-X", traffic])
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run unshare(1) for sendmail: {e}")))?;
        let pid = child.id();
        self.child = Some(child);
        let port = self.port;
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                exited = Some(status);
                return true;
            }
            is_listening(port)
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(io::Error::other(format!(
                "sendmail (pid {pid}) exited with {status} at start:\n{}",
                self.output().trim()
            )));
        }
        if !ready {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "sendmail (pid {pid}) did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                    self.output().trim()
                ),
            ));
        }
        Ok(())
    }

    /// Files that do not depend on the options.
    fn write_static_files(&self) -> io::Result<()> {
        let etc = self.root.join("etc");
        fs::write(
            etc.join("hosts"),
            format!("127.0.0.1\t{MYHOSTNAME} localhost\n::1\tlocalhost\n"),
        )?;
        fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
        // Sendmail's own switch (ServiceSwitchFile): no DNS for host names.
        fs::write(etc.join("service.switch"), "hosts files\naliases files\n")?;
        fs::write(etc.join("aliases"), "")?;
        fs::write(etc.join("statistics"), "")?;
        Ok(())
    }

    fn write_sasl(&self, users: &[(String, String)]) -> io::Result<()> {
        let sasl = self.root.join("sasl");
        let sasldb = sasl.join("sasldb2");
        fs::write(
            sasl.join("Sendmail.conf"),
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
            let db = sasldb.to_str().ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
            let args = ["-f", db, "-c", "-p", "-u", domain, user];
            let mut child = Command::new("/usr/sbin/saslpasswd2")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot run /usr/sbin/saslpasswd2: {e}")))?;
            child
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin pipe"))?
                .write_all(password.as_bytes())?;
            checked("saslpasswd2", &args, child.wait_with_output()?)?;
        }
        Ok(())
    }

    /// Writes sendmail.mc, builds sendmail.cf with m4 and the alias
    /// database with `sendmail -bi`.
    fn write_config(&self, opts: &SendmailOptions) -> io::Result<()> {
        let etc = self.root.join("etc");
        let mc = sendmail_mc(&self.sendmail_root, &self.root, self.port, opts)?;
        fs::write(etc.join("sendmail.mc"), &mc)?;
        let out = Command::new("m4")
            .arg(etc.join("sendmail.mc"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run m4: {e} ({HINT})")))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stderr.trim().is_empty() {
            return Err(io::Error::other(format!(
                "m4 {}/sendmail.mc failed ({}): {}",
                etc.display(),
                out.status,
                stderr.trim()
            )));
        }
        fs::write(self.cf_path(), &out.stdout)?;
        self.run(&["-bi"]).map(drop)
    }
}

impl Drop for SendmailInstance {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "sendmail: test failed; end of {}/traffic.log :\n{}\n--- sendmail.out ---\n{}\n(set \
                 EGRESS_MILTER_LIVE_KEEP=1 to keep the instance)",
                self.root.display(),
                self.traffic_tail(60),
                self.output().trim()
            );
        }
        self.stop();
        if std::env::var("EGRESS_MILTER_LIVE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("sendmail: kept {}", dir.keep().display());
        }
    }
}

/// A private Sendmail and the sink it relays to. Fields drop in order:
/// Sendmail stops before the sink goes away.
pub struct SendmailMta {
    /// The Sendmail instance.
    pub sendmail: SendmailInstance,
    /// Where it delivers.
    pub sink: SmtpSink,
}

impl SendmailMta {
    /// Starts a sink, then a Sendmail relaying to it, configured by
    /// `configure` (which gets options already pointing at the sink).
    /// Panics with the reason when either cannot start: a live test must
    /// never pass without them.
    pub fn start(configure: impl FnOnce(SendmailOptions) -> SendmailOptions) -> SendmailMta {
        let sink = SmtpSink::start().expect("live harness: cannot start the SMTP sink");
        let opts = configure(SendmailOptions::new(sink.port()));
        let sendmail = SendmailInstance::start(opts).unwrap_or_else(|err| {
            panic!(
                "live harness: cannot start a private Sendmail ({}=1 is set, so this is a failure, not a skip): {err}",
                crate::harness::LIVE_ENV
            )
        });
        SendmailMta { sendmail, sink }
    }
}

/// Run by `sh -c` inside `unshare --mount --uts`. Arguments: host name,
/// hosts file, resolv.conf, SASL directory, then the command.
const NAMESPACE_SCRIPT: &str = r#"set -e
hostname "$1"
mount --bind "$2" /etc/hosts
if [ -e /etc/resolv.conf ]; then mount --bind "$3" /etc/resolv.conf; fi
for dir in /etc/sasl2 /etc/sasl /usr/lib/sasl2; do
    if [ -d "$dir" ]; then mount --bind "$4" "$dir"; fi
done
shift 4
exec "$@"
"#;

/// Checks root and the programs before touching anything.
fn preflight(sendmail_root: &Path, opts: &SendmailOptions) -> io::Result<()> {
    let missing =
        |what: &Path| io::Error::new(io::ErrorKind::NotFound, format!("{} not found: {HINT}", what.display()));
    for file in ["usr/libexec/sendmail/sendmail", "usr/share/sendmail/cf/m4/cf.m4"] {
        let path = sendmail_root.join(file);
        if !path.exists() {
            return Err(missing(&path));
        }
    }
    for program in ["/usr/bin/m4", "/usr/bin/unshare", "/usr/bin/mount"] {
        if !Path::new(program).exists() {
            return Err(missing(Path::new(program)));
        }
    }
    if !opts.sasl_users.is_empty() && !Path::new("/usr/sbin/saslpasswd2").exists() {
        return Err(missing(Path::new("/usr/sbin/saslpasswd2")));
    }
    if !SASL_CONF_DIRS.iter().any(|d| Path::new(d).is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "none of {SASL_CONF_DIRS:?} exists, so there is nothing to mount the instance's SASL configuration \
                 over (libsasl2-2 ships /usr/lib/sasl2): {HINT}"
            ),
        ));
    }
    if effective_uid()? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the Sendmail live tests must run as root (the daemon binds and switches users; the harness mounts \
             over /etc/hosts in a private namespace)",
        ));
    }
    if opts.sink_port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SendmailOptions::sink_port is 0",
        ));
    }
    Ok(())
}

/// The sendmail.mc of an instance rooted at `dir`, listening on `port`.
pub fn sendmail_mc(sendmail_root: &Path, dir: &Path, port: u16, opts: &SendmailOptions) -> io::Result<String> {
    let cf_m4 = sendmail_root.join("usr/share/sendmail/cf/m4/cf.m4");
    let dir = dir.display();
    let mut mc = format!(
        "\
divert(-1)dnl
# Written by the egress-milter live-test harness (milter-tests/live/sendmail.rs).
divert(0)dnl
include(`{cf_m4}')dnl
VERSIONID(`egress-milter live test instance')dnl
OSTYPE(`linux')dnl
dnl Every file of the instance is in its directory.
define(`MAIL_SETTINGS_DIR', `{dir}/etc/')dnl
define(`QUEUE_DIR', `{dir}/mqueue')dnl
define(`confPID_FILE', `{dir}/sendmail.pid')dnl
define(`STATUS_FILE', `{dir}/etc/statistics')dnl
define(`ALIAS_FILE', `{dir}/etc/aliases')dnl
define(`confDOMAIN_NAME', `{MYHOSTNAME}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDEF_USER_ID', ``mail:mail'')dnl
define(`confTO_IDENT', `0')dnl
dnl A busy test machine must not make Sendmail queue or refuse mail.
define(`confQUEUE_LA', `1000')dnl
define(`confREFUSE_LA', `1000')dnl
define(`confDELAY_LA', `0')dnl
define(`confDELIVERY_MODE', `background')dnl
dnl One port on 127.0.0.1, no MSA on 587.
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet, Addr=127.0.0.1, Port={port}, Name=MTA')dnl
dnl Test domains do not resolve, and nothing may be looked up.
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
dnl SMTP AUTH against the instance's sasldb, without TLS; authenticated
dnl clients may relay.
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
TRUST_AUTH_MECH(`PLAIN LOGIN')dnl
define(`confAUTH_OPTIONS', `A')dnl
dnl Everything goes to the sink. The mailer is named: a bare [127.0.0.1] is
dnl in class w (this host) and would be taken for local delivery.
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink}')dnl
",
        cf_m4 = cf_m4.display(),
        sink = opts.sink_port,
    );
    if let Some(socket) = &opts.milter {
        mc.push_str("dnl --- conf/sendmail/egress-milter.mc, socket replaced ---\n");
        mc.push_str(&milter_snippet(socket)?);
        mc.push_str("dnl --- end of conf/sendmail/egress-milter.mc ---\n");
    }
    for line in &opts.mc {
        mc.push_str(line);
        mc.push('\n');
    }
    mc.push_str("MAILER(`smtp')dnl\n");
    Ok(mc)
}

/// conf/sendmail/egress-milter.mc with the `S=` value of its
/// `INPUT_MAIL_FILTER` line replaced by `socket`. Fails if the file no
/// longer has exactly one such line.
pub fn milter_snippet(socket: &str) -> io::Result<String> {
    let mut out = String::new();
    let mut replaced = 0;
    for line in MILTER_MC.lines() {
        if line.starts_with("INPUT_MAIL_FILTER(")
            && let Some(start) = line.find("S=")
        {
            let value_start = start + 2;
            let value_end = line[value_start..]
                .find([',', '\''])
                .map_or(line.len(), |i| value_start + i);
            out.push_str(&line[..value_start]);
            out.push_str(socket);
            out.push_str(&line[value_end..]);
            out.push('\n');
            replaced += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if replaced != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "conf/sendmail/egress-milter.mc must have exactly one INPUT_MAIL_FILTER with S= (found {replaced})"
            ),
        ));
    }
    Ok(out)
}

/// The output of a finished command, or an error with its stderr.
fn checked(program: &str, args: &[&str], out: Output) -> io::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}{}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milter_snippet_replaces_only_the_socket() {
        let snippet = milter_snippet("local:/tmp/egress-test/milter.sock").expect("snippet");
        let filter: Vec<&str> = snippet
            .lines()
            .filter(|l| l.starts_with("INPUT_MAIL_FILTER("))
            .collect();
        assert_eq!(filter.len(), 1, "{snippet}");
        assert!(
            filter[0].starts_with("INPUT_MAIL_FILTER(`egress-milter', `S=local:/tmp/egress-test/milter.sock, F=T, "),
            "{}",
            filter[0]
        );
        assert!(!snippet.contains("S=local:/run/egress-milter/milter.sock"), "{snippet}");
        // Everything else is the file as shipped.
        assert_eq!(snippet.lines().count(), MILTER_MC.lines().count());
        let macros = snippet
            .lines()
            .find(|l| l.starts_with("define(`confMILTER_MACROS_ENVFROM'"))
            .expect("confMILTER_MACROS_ENVFROM");
        for needed in ["`i,", "{auth_authen}"] {
            assert!(macros.contains(needed), "{macros}");
        }
    }

    #[test]
    fn mc_puts_every_path_in_the_instance() {
        let mc = sendmail_mc(
            Path::new("/sm"),
            Path::new("/run/x"),
            2525,
            &SendmailOptions::new(2626).milter_port(7000).mc("dnl extra"),
        )
        .expect("mc");
        assert!(mc.contains("include(`/sm/usr/share/sendmail/cf/m4/cf.m4')dnl\n"));
        assert!(mc.contains("DAEMON_OPTIONS(`Family=inet, Addr=127.0.0.1, Port=2525, Name=MTA')dnl\n"));
        assert!(mc.contains("define(`RELAY_MAILER_ARGS', `TCP $h 2626')dnl\n"));
        assert!(mc.contains("S=inet:7000@127.0.0.1, F=T"));
        assert!(mc.ends_with("dnl extra\nMAILER(`smtp')dnl\n"), "{mc}");
        for line in mc.lines().filter(|l| l.contains("`/")) {
            let path = line.split("`/").nth(1).expect("path");
            assert!(path.starts_with("run/x/") || path.starts_with("sm/"), "{line}");
        }
        let without = sendmail_mc(Path::new("/sm"), Path::new("/run/x"), 1, &SendmailOptions::new(2)).expect("mc");
        assert!(!without.contains("INPUT_MAIL_FILTER"));
    }

    /// docs/sendmail.md shows the shipped lines verbatim.
    #[test]
    fn docs_quote_the_shipped_milter_lines() {
        let docs = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sendmail.md"))
            .expect("read docs/sendmail.md");
        for line in MILTER_MC.lines().filter(|l| !l.starts_with("dnl")) {
            assert!(docs.contains(line), "docs/sendmail.md lacks the line\n{line}");
        }
    }
}
