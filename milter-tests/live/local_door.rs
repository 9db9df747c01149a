// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The local-submission door (issue 12): mail that Unix users submit with
//! Postfix's sendmail command enters through pickup and reaches egress-milter
//! through `non_smtpd_milters`, counted per user from the pickup stamp of
//! `conf/postfix/master.cf.local-submission`, and per PHP script when PHP's
//! header names the user's own uid.
//!
//! Real unprivileged users (`egress-web1`, `egress-web2`, made by
//! milter-tests/install-deps.sh) run `/usr/sbin/sendmail -C DIR` against the
//! private instance. A sendmail run by a user other than root accepts that
//! only for a directory that the default /etc/postfix/main.cf lists in
//! `alternate_config_directories`: install-deps.sh lists
//! [`LOCAL_DOOR_CONFIG`], and [`LocalDoor`] points it (a symbolic link) at
//! the instance's `etc/`, one test at a time under a file lock.
//!
//! What Postfix does with a local submission that the milter refuses,
//! checked here: a 4xx leaves the message in the maildrop queue, and pickup
//! offers it again at each of its scans (at every new submission, and every
//! 60 s), so every retry is an attempt in the lock rules; a 5xx makes
//! cleanup bounce it to the envelope sender; a hold puts it in the hold
//! queue.

use crate::egress::{MilterConfig, poll_until};
use crate::harness::skip_unless_live;
use crate::postfix::{PostfixInstance, TRUSTED_UPSTREAM};
use crate::scenarios::{Live, WAIT, assert_accepted, message};
use crate::sink::ReceivedMessage;
use crate::smtp::Envelope;
use nix::unistd::User;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The configuration directory that install-deps.sh lists in the default
/// instance's `alternate_config_directories`.
const LOCAL_DOOR_CONFIG: &str = "/run/egress-milter-tests/local-door/etc";
/// Serialises the tests that point [`LOCAL_DOOR_CONFIG`] at their instance.
const LOCAL_DOOR_LOCK: &str = "/run/egress-milter-tests/local-door.lock";
/// The test users install-deps.sh makes.
pub(crate) const WEB1: &str = "egress-web1";
pub(crate) const WEB2: &str = "egress-web2";
/// `myorigin` of the instances: sendmail's default sender is `USER@` this.
pub(crate) const ORIGIN: &str = "mta.egress-test.invalid";
const HINT: &str = "run `bash milter-tests/install-deps.sh` as root";

/// [`LOCAL_DOOR_CONFIG`] pointing at one instance's `etc/`, while held.
/// The detection benchmark holds one for its run too (its local styles).
pub(crate) struct LocalDoor {
    link: PathBuf,
    /// The exclusive lock on [`LOCAL_DOOR_LOCK`]; released on drop.
    _lock: fs::File,
}

impl LocalDoor {
    /// Waits for the lock, then points the link at `postfix`'s `etc/`.
    /// Panics with what to run when install-deps.sh has not prepared the
    /// machine.
    pub(crate) fn claim(postfix: &PostfixInstance) -> LocalDoor {
        let dirs = Command::new("/usr/sbin/postconf")
            .args(["-c", "/etc/postfix", "-h", "alternate_config_directories"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run postconf ({HINT}): {e}"));
        let dirs = String::from_utf8_lossy(&dirs.stdout);
        assert!(
            dirs.split(|c: char| c == ',' || c.is_whitespace())
                .any(|d| d == LOCAL_DOOR_CONFIG),
            "/etc/postfix/main.cf does not list {LOCAL_DOOR_CONFIG} in alternate_config_directories ({HINT}); it has {dirs:?}"
        );
        let link = PathBuf::from(LOCAL_DOOR_CONFIG);
        let parent = link.parent().expect("a parent directory");
        fs::create_dir_all(parent).expect("create the local-door directory");
        // The users follow the link: every directory on the way is 0755.
        for dir in [parent, parent.parent().expect("/run/egress-milter-tests")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        }
        let lock = fs::File::create(LOCAL_DOOR_LOCK).expect("create the local-door lock file");
        lock.lock().expect("lock the local-door lock file");
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove the old {LOCAL_DOOR_CONFIG}: {e}"),
        }
        std::os::unix::fs::symlink(postfix.config_dir(), &link).expect("link the instance's etc/");
        LocalDoor { link, _lock: lock }
    }

    /// `user` runs `sendmail -C LOCAL_DOOR_CONFIG -i RCPT` with `content`
    /// on its standard input, in a clean environment; panics unless
    /// sendmail says it took the message.
    fn submit(&self, user: &User, rcpt: &str, content: &str) {
        sendmail(user, &[rcpt.to_string()], content).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `user` runs `sendmail -C LOCAL_DOOR_CONFIG -i RCPT...` with `content` on
/// its standard input, in a clean environment, as a PHP `mail()` or a cron
/// job does; Ok when sendmail says it took the message (it exits 0 once
/// the message is in the maildrop, whatever the milter says later). Only
/// while a [`LocalDoor`] is held.
pub(crate) fn sendmail(user: &User, rcpts: &[String], content: &str) -> Result<(), String> {
    let mut child = Command::new("/usr/sbin/sendmail")
        .arg("-C")
        .arg(LOCAL_DOOR_CONFIG)
        .args(["-i", "--"])
        .args(rcpts)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/bin")
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run /usr/sbin/sendmail: {e}"))?;
    child
        .stdin
        .take()
        .expect("sendmail's stdin")
        .write_all(content.as_bytes())
        .map_err(|e| format!("cannot write the message to sendmail: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for sendmail: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "sendmail as {} failed ({}): {}",
            user.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for LocalDoor {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.link);
    }
}

/// The Unix user `name` (one that install-deps.sh makes); panics with what
/// to run when it is missing.
pub(crate) fn user(name: &str) -> User {
    User::from_name(name)
        .unwrap_or_else(|e| panic!("look up {name}: {e}"))
        .unwrap_or_else(|| panic!("no user {name} ({HINT})"))
}

/// A message of `who` to `rcpt` with `extra` headers.
fn local_message(who: &str, rcpt: &str, subject: &str, extra: &[(&str, &str)]) -> String {
    message(&format!("{who}@{ORIGIN}"), &[rcpt], subject, extra)
}

/// Messages at the sink whose subject is `subject`.
fn with_subject(sink: &[ReceivedMessage], subject: &str) -> usize {
    sink.iter()
        .filter(|m| m.header("Subject").as_deref() == Some(subject))
        .count()
}

/// The bounces at the sink to `who`, each with the subject it returns.
fn bounces_to(sink: &[ReceivedMessage], who: &str) -> Vec<String> {
    let address = format!("{who}@{ORIGIN}");
    sink.iter()
        .filter(|m| m.mail_from.is_empty() && m.rcpt_to == [address.clone()])
        .map(|m| {
            let text = m.text();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").filter(|s| s.starts_with(who)))
                .unwrap_or("(no subject)")
                .to_string()
        })
        .collect()
}

/// Files in the instance's maildrop queue (mail pickup still has to offer).
fn maildrop(postfix: &PostfixInstance) -> usize {
    fs::read_dir(postfix.queue_dir().join("maildrop")).map_or(0, |d| d.count())
}

/// Makes pickup scan the maildrop now (`postkick`), as a new submission would.
fn kick_pickup(postfix: &PostfixInstance) {
    let _ = postfix.run("postkick", &["public", "pickup", "W"]);
}

#[test]
fn local_users_are_counted_throttled_and_locked_through_pickup() {
    if skip_unless_live() {
        return;
    }
    let started = Instant::now();
    let (web1, web2) = (user(WEB1), user(WEB2));
    let config = MilterConfig::fixture("local-door.toml");
    let live = Live::start_with(config.clone(), |o| o.local_submission());
    let postfix = &live.mta.postfix;
    let door = LocalDoor::claim(postfix);
    let rcpt = "rcpt@remote.test";

    // A hijacked script of web1 sends as fast as sendmail takes it: three
    // get out, then pickup is told 451 and keeps each message in the
    // maildrop, offering it again at every scan; every offer is an attempt,
    // and the lock rule (6 an hour) locks local:egress-web1.
    for i in 1..=8 {
        door.submit(&web1, rcpt, &local_message(WEB1, rcpt, &format!("{WEB1}-{i}"), &[]));
    }
    let lock = poll_until(WAIT, || {
        kick_pickup(postfix);
        std::thread::sleep(Duration::from_millis(200));
        live.milter.locks().get(&format!("local:{WEB1}")).is_some()
    });
    assert!(lock, "no lock\n{}\n{}", live.milter.log_tail(30), postfix.log_tail(30));
    let entry = live
        .milter
        .wait_for_lock(&format!("local:{WEB1}"), WAIT)
        .expect("the lock");
    assert_eq!(entry.rule.as_deref(), Some("lock-attempts"));
    assert!(entry.reason.contains("identity from local-user"), "{}", entry.reason);
    assert!(
        // The milter answers after the headers; cleanup, which hands it the
        // whole message at once, logs any content-stage reply as END-OF-MESSAGE.
        postfix
            .log()
            .contains("milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 4.7.1"),
        "pickup's mail was throttled:\n{}",
        postfix.log_tail(30)
    );
    // Once locked, what is left in the maildrop is refused with 550 and
    // cleanup bounces it to the sender; so is web1's next message.
    door.submit(
        &web1,
        rcpt,
        &local_message(WEB1, rcpt, &format!("{WEB1}-after-lock"), &[]),
    );
    let all_bounced = poll_until(WAIT, || {
        kick_pickup(postfix);
        std::thread::sleep(Duration::from_millis(200));
        maildrop(postfix) == 0 && bounces_to(&live.mta.sink.messages(), WEB1).len() == 6
    });
    let sink = live.mta.sink.messages();
    assert!(
        all_bounced,
        "maildrop {}, bounces {:?}\n{}",
        maildrop(postfix),
        bounces_to(&sink, WEB1),
        postfix.log_tail(40)
    );
    for i in 1..=3 {
        assert_eq!(with_subject(&sink, &format!("{WEB1}-{i}")), 1, "{WEB1}-{i} delivered");
    }
    let mut bounced = bounces_to(&sink, WEB1);
    bounced.sort();
    let mut expected: Vec<String> = (4..=8).map(|i| format!("{WEB1}-{i}")).collect();
    expected.push(format!("{WEB1}-after-lock"));
    expected.sort();
    assert_eq!(bounced, expected, "every refused message bounced once");
    let mut out: Vec<String> = sink
        .iter()
        .filter(|m| m.mail_from == format!("{WEB1}@{ORIGIN}"))
        .filter_map(|m| m.header("Subject"))
        .collect();
    out.sort();
    assert_eq!(
        out,
        [1, 2, 3].map(|i| format!("{WEB1}-{i}")),
        "nothing more of web1's got out"
    );
    assert!(
        postfix.log().contains(
            "milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 5.7.1 Sending as local:egress-web1 is suspended"
        ),
        "{}",
        postfix.log_tail(30)
    );

    // A locked user's mail can be held instead (no bounce to a sender that
    // a hijacked script may have forged): after a reload with
    // locked_action = "hold", web1's next message waits in the hold queue.
    live.milter
        .write_config(&config.set("locks.locked_action", "hold").to_toml());
    live.milter.sighup();
    assert!(live.milter.wait_for_log(&["configuration reloaded"], WAIT));
    door.submit(&web1, rcpt, &local_message(WEB1, rcpt, &format!("{WEB1}-held"), &[]));
    let held = postfix
        // Until pickup is done with it, the message is listed twice: the
        // maildrop file it reads and the hold queue file cleanup wrote.
        .wait_for_queue(WAIT, |q| {
            q.iter().any(|e| e.queue_name == "hold") && q.iter().all(|e| e.queue_name != "maildrop")
        })
        .expect("postqueue -j");
    let held = held.unwrap_or_else(|| panic!("nothing held\n{}", postfix.log_tail(20)));
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].sender, format!("{WEB1}@{ORIGIN}"));
    assert_eq!(
        bounces_to(&live.mta.sink.messages(), WEB1).len(),
        6,
        "a held message is not bounced"
    );
    // web2 is another user: its mail flows while web1 is locked. Its PHP
    // script's header names its own uid and is believed (the user is
    // counted beside it); one naming another uid is not.
    let php_ok = format!("{}:contact.php", web2.uid);
    let php_forged = "0:contact.php".to_string();
    for (subject, extra) in [
        ("web2-plain", vec![]),
        ("web2-php", vec![("X-PHP-Originating-Script", php_ok.as_str())]),
        (
            "web2-php-forged",
            vec![("X-PHP-Originating-Script", php_forged.as_str())],
        ),
    ] {
        door.submit(&web2, rcpt, &local_message(WEB2, rcpt, subject, &extra));
    }
    let delivered = poll_until(WAIT, || {
        let sink = live.mta.sink.messages();
        ["web2-plain", "web2-php", "web2-php-forged"]
            .iter()
            .all(|s| with_subject(&sink, s) == 1)
    });
    assert!(delivered, "{}\n{}", live.milter.log_tail(30), postfix.log_tail(30));
    let accepted = |identity: &str, source: &str| {
        live.milter
            .log_lines(&[
                "accepted",
                &format!("identity={identity} "),
                &format!("source={source}"),
            ])
            .len()
    };
    assert_eq!(accepted(&format!("local:{WEB2}"), "local-user"), 2);
    assert_eq!(accepted(&format!("php:{WEB2}:contact.php"), "php-script"), 1);
    assert_eq!(accepted(&format!("local:{WEB1}"), "local-user"), 3);
    assert!(
        live.milter.wait_for_log(
            &[&format!("names uid 0, but uid {} submitted the message", web2.uid)],
            WAIT
        ),
        "{}",
        live.milter.log_tail(20)
    );
    // The script counted against its user too: web2 has used its three,
    // and its fourth message is throttled.
    door.submit(&web2, rcpt, &local_message(WEB2, rcpt, "web2-fourth", &[]));
    assert!(
        live.milter.wait_for_log(
            &[
                "refused temporarily",
                &format!("identity=local:{WEB2} "),
                "rule=messages-per-hour"
            ],
            WAIT
        ),
        "{}",
        live.milter.log_tail(20)
    );
    assert_eq!(with_subject(&live.mta.sink.messages(), "web2-fourth"), 0);

    println!("local door scenario: {:?}", started.elapsed());
}

/// The same headers over SMTP change nothing: a client of the trusted
/// upstream address writes a stamp naming uid 0 and pickup's Received
/// header; it is still counted as its client address.
#[test]
fn forged_local_headers_over_smtp_change_nothing() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start_with(MilterConfig::fixture("local-door.toml"), |o| o.local_submission());
    for i in 1..=3 {
        let subject = format!("forged-{i}");
        let content = message(
            "bob@example.org",
            &["rcpt@remote.test"],
            &subject,
            &[
                ("X-Egress-Submitter", "uid=0 id=FORGED"),
                (
                    "Received",
                    "by mta.egress-test.invalid (Postfix, from userid 0)\r\n\tid FORGED; Mon, 23 Nov 2026 12:00:00 +0000",
                ),
                ("X-PHP-Originating-Script", "0:index.php"),
            ],
        );
        let envelope = Envelope::new(live.mta.postfix.relay_port(), "bob@example.org", &["rcpt@remote.test"])
            .source(TRUSTED_UPSTREAM)
            .content(&content);
        assert_accepted(&live.send(&envelope));
    }
    live.assert_all_delivered(3);
    let as_client = live.milter.log_lines(&[
        "accepted",
        &format!("identity={TRUSTED_UPSTREAM} "),
        "source=client-address",
    ]);
    assert_eq!(as_client.len(), 3, "{}", live.milter.log_tail(20));
    assert!(live.milter.log_lines(&["identity=local:"]).is_empty());
    assert!(live.milter.log_lines(&["identity=php:"]).is_empty());
    assert!(live.milter.locks().get("local:root").is_none());
}

/// The shipped master.cf lines are valid Postfix and say what the docs say.
#[test]
fn master_cf_local_submission_example_is_valid() {
    if skip_unless_live() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/postfix");
    fs::copy(conf.join("master.cf.local-submission"), dir.path().join("master.cf")).expect("copy");
    fs::write(dir.path().join("main.cf"), crate::postfix::MAIN_CF_MILTER).expect("write main.cf");
    let postconf = |args: &[&str]| crate::postfix::postconf_in(dir.path(), args);
    assert_eq!(
        postconf(&["-P", "-h", "pickup/unix/cleanup_service_name"]),
        "egress-cleanup"
    );
    assert_eq!(
        postconf(&["-P", "-h", "egress-cleanup/unix/header_checks"]),
        "regexp:/etc/postfix/egress-submitter.regexp"
    );
    let service = postconf(&["-M", "egress-cleanup/unix"]);
    let columns: Vec<&str> = service.split_whitespace().take(8).collect();
    assert_eq!(
        columns,
        ["egress-cleanup", "unix", "n", "-", "y", "-", "0", "cleanup"],
        "{service}"
    );
    assert_eq!(
        postconf(&["-h", "non_smtpd_milters"]),
        "unix:/egress-milter/milter.sock"
    );
    // The table is valid regexp syntax (postmap -q finds the stamp).
    let table = conf.join("egress-submitter.regexp");
    let out = Command::new("/usr/sbin/postmap")
        .arg("-q")
        .arg("Received: by h.example (Postfix, from userid 33)\n\tid 4ABC12; Mon, 1 Jan 2024")
        .arg(format!("regexp:{}", table.display()))
        .output()
        .expect("run postmap");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PREPEND X-Egress-Submitter: uid=33 id=4ABC12",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
