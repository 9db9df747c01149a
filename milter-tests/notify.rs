// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Lock notifications: the configured command really runs, the report
//! really reaches an SMTP server, once per lock, within the hourly cap, and
//! a hanging command neither delays the milter nor outlives its timeout.

use crate::common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(10);

/// One message as the sink received it.
#[derive(Clone, Debug)]
struct Received {
    from: String,
    rcpts: Vec<String>,
    /// Headers and body, dot-stuffing undone, CRLF kept.
    data: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        let (head, _) = self.data.split_once("\r\n\r\n")?;
        head.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// A tiny SMTP server on 127.0.0.1 that keeps what it is sent. The first
/// `tempfail` MAIL commands get `451`.
struct Sink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start(tempfail: usize) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let tempfail = Arc::new(AtomicUsize::new(tempfail));
        let task = {
            let mails = mails.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(sink_session(stream, mails.clone(), tempfail.clone()));
                }
            })
        };
        Sink { addr, mails, task }
    }

    fn mails(&self) -> Vec<Received> {
        self.mails.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn sink_session(stream: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Received>>>, tempfail: Arc<AtomicUsize>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink.test ESMTP\r\n").await.unwrap();
    let mut from = String::new();
    let mut rcpts = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let arg = |prefix: &str| {
            line[prefix.len()..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string()
        };
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            if tempfail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                b"451 4.3.0 not now\r\n"
            } else {
                from = arg("MAIL FROM:");
                rcpts.clear();
                b"250 2.1.0 ok\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(arg("RCPT TO:"));
            b"250 2.1.5 ok\r\n"
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await.unwrap();
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            mails.lock().unwrap().push(Received {
                from: from.clone(),
                rcpts: rcpts.clone(),
                data,
            });
            b"250 2.0.0 queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 5.5.2 what\r\n"
        };
        w.write_all(reply).await.unwrap();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("milter-tests/fixtures")
        .join(name)
}

/// A lock rule that locks at the third message in an hour, and `notify`
/// as the `[notify]` section.
fn config(locks: &str, notify: &str) -> String {
    format!(
        r#"
[[rule]]
name = "lock-messages"
rate = "2/1h"
action = "lock"

[locks]
{locks}

[notify]
hostname = "mx-test.example"
{notify}
"#
    )
}

/// `[notify]` lines running notify-hook.sh (output in `out`) and mailing through `sink`.
fn hook_and_mail(out: &Path, sink: &Sink) -> String {
    format!(
        r#"command = ["/bin/sh", "{}", "{}", "--ticket"]
command_timeout = "10s"
mail_to = ["postmaster@example.com", "security@example.com"]
mail_from = "egress@mx-test.example"
smtp_relay = "{}"
smtp_timeout = "5s"
"#,
        script("notify-hook.sh").display(),
        out.display(),
        sink.addr
    )
}

/// Sends messages from `login` until it is locked (the third); queue ids
/// are `{tag}1`, `{tag}2`, `{tag}3`.
async fn lock_out(m: &Milter, login: &str, tag: &str) {
    for i in 1..=3 {
        let mut msg = Msg::from_user(login);
        msg.queue_id = format!("{tag}{i}");
        let out = Mta::send(m.addr, &msg).await;
        assert_eq!(out.accepted(), i < 3, "message {i} of {login}: {out:?}");
    }
    let locked = format!("550 5.7.1 Sending as {login} is suspended; please contact your postmaster");
    assert_eq!(
        Mta::send(m.addr, &Msg::from_user(login)).await.refusal().as_deref(),
        Some(locked.as_str())
    );
}

/// The command's runs so far: one map of its recorded variables per run.
fn hook_runs(dir: &Path) -> Vec<HashMap<String, String>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("run.") && name.ends_with(".env") {
            let text = std::fs::read_to_string(&path).unwrap();
            let vars = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            runs.push(vars);
        }
    }
    runs
}

fn identities(runs: &[HashMap<String, String>]) -> Vec<String> {
    let mut ids: Vec<String> = runs.iter().map(|r| r["EGRESS_IDENTITY"].clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_new_lock_runs_the_command_once_and_mails_the_postmaster() {
    let out = tempfile::tempdir().unwrap();
    let sink = Sink::start(0).await;
    let m = Milter::spawn(&config("", &hook_and_mail(out.path(), &sink))).await;
    lock_out(&m, "alice@example.com", "ALICE").await;

    eventually(BOUND, "the command ran", async || hook_runs(out.path()).len() == 1).await;
    eventually(BOUND, "the report arrived", async || sink.mails().len() == 1).await;
    eventually(BOUND, "the lock was written", async || {
        m.lock_list().get("alice@example.com").is_some()
    })
    .await;
    let entry = m.lock_list().get("alice@example.com").unwrap().clone();

    let run = &hook_runs(out.path())[0];
    assert_eq!(run["ARGS"], "--ticket");
    assert_eq!(run["EGRESS_IDENTITY"], "alice@example.com");
    assert_eq!(run["EGRESS_IDENTITY_SOURCE"], "auth");
    assert_eq!(run["EGRESS_SOURCE"], "auto");
    assert_eq!(run["EGRESS_RULE"], "lock-messages");
    assert_eq!(run["EGRESS_REASON"], entry.reason);
    assert_eq!(run["EGRESS_COUNTED"], "messages");
    assert_eq!(run["EGRESS_SCOPE"], "identity");
    assert_eq!(run["EGRESS_COUNT"], "2");
    assert_eq!(run["EGRESS_LIMIT"], "2");
    assert_eq!(run["EGRESS_WINDOW"], "1h");
    assert_eq!(run["EGRESS_LOCKED_AT"], entry.locked_at.to_string());
    assert_eq!(run["EGRESS_EXPIRES_AT"], "");
    // The message that tripped the lock, then the accepted ones, newest first.
    assert_eq!(run["EGRESS_QUEUE_IDS"], "ALICE3 ALICE2 ALICE1");
    assert_eq!(run["EGRESS_HOSTNAME"], "mx-test.example");

    let mail = &sink.mails()[0];
    assert_eq!(mail.from, "egress@mx-test.example");
    assert_eq!(mail.rcpts, ["postmaster@example.com", "security@example.com"]);
    assert_eq!(
        mail.header("Subject"),
        Some("egress-milter locked alice@example.com: rule lock-messages")
    );
    assert_eq!(mail.header("From"), Some("egress-milter <egress@mx-test.example>"));
    assert_eq!(mail.header("To"), Some("postmaster@example.com, security@example.com"));
    assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(mail.header("MIME-Version"), Some("1.0"));
    assert_eq!(mail.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert!(mail.header("Date").is_some_and(|d| d.ends_with(" +0000")));
    assert!(
        mail.header("Message-ID")
            .is_some_and(|id| id.starts_with("<egress-milter.") && id.ends_with("@mx-test.example>"))
    );
    let body = mail.body();
    for expected in [
        "Identity:   alice@example.com (from auth)\r\n",
        "Rule:       lock-messages: 2/2 messages per identity in 1h\r\n",
        &format!("Reason:     {}\r\n", entry.reason),
        &format!("Locked at:  {}\r\n", entry.locked_at),
        "Expires:    never",
        "Queue ids:  ALICE3 ALICE2 ALICE1\r\n",
        "    egress-milter locks show alice@example.com\r\n",
        "    egress-milter locks remove alice@example.com\r\n",
    ] {
        assert!(body.contains(expected), "{expected:?} not in:\n{body}");
    }

    // More refused mail from the locked identity: no new notification.
    for _ in 0..3 {
        assert!(!Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.accepted());
    }
    // Stopping finishes every queued notification: nothing else was sent.
    m.shutdown().await;
    assert_eq!(hook_runs(out.path()).len(), 1);
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test]
async fn a_lock_after_the_last_one_expired_is_notified_again() {
    let out = tempfile::tempdir().unwrap();
    let sink = Sink::start(0).await;
    let locks = "auto_lock_duration = \"10m\"";
    let m = Milter::spawn(&config(locks, &hook_and_mail(out.path(), &sink))).await;
    lock_out(&m, "alice@example.com", "FIRST").await;
    eventually(BOUND, "the first report", async || sink.mails().len() == 1).await;
    eventually(BOUND, "the lock was written", async || {
        m.lock_list().get("alice@example.com").is_some()
    })
    .await;
    let first = hook_runs(out.path());
    assert_eq!(first.len(), 1);
    assert_ne!(first[0]["EGRESS_EXPIRES_AT"], "");

    // The lock lapses; the identity keeps pushing and is locked again.
    // (The daemon may still hold the written lock in memory as pending for a
    // moment; messages keep coming until the identity is locked again.)
    m.clock.advance(Duration::from_secs(11 * 60));
    let mut n = 0;
    eventually(BOUND, "the second report", async || {
        n += 1;
        let mut msg = Msg::from_user("alice@example.com");
        msg.queue_id = format!("SECOND{n}");
        assert!(!Mta::send(m.addr, &msg).await.accepted());
        sink.mails().len() == 2
    })
    .await;
    eventually(BOUND, "the command ran twice", async || {
        hook_runs(out.path()).len() == 2
    })
    .await;
    let runs = hook_runs(out.path());
    let mut queue_ids: Vec<&str> = runs.iter().map(|r| r["EGRESS_QUEUE_IDS"].as_str()).collect();
    queue_ids.sort();
    assert_eq!(queue_ids[0], "FIRST3 FIRST2 FIRST1");
    assert!(queue_ids[1].starts_with("SECOND"), "{queue_ids:?}");
    assert_ne!(runs[0]["EGRESS_LOCKED_AT"], runs[1]["EGRESS_LOCKED_AT"]);
    m.shutdown().await;
    assert_eq!(sink.mails().len(), 2);
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }
        Err(_) => false,
    }
}

fn hang_pids(dir: &Path) -> Option<Vec<u32>> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("hang.") {
            let text = std::fs::read_to_string(&path).unwrap();
            return Some(text.split_whitespace().map(|p| p.parse().unwrap()).collect());
        }
    }
    None
}

#[tokio::test]
async fn a_hanging_command_delays_nothing_and_is_killed_at_its_timeout() {
    let out = tempfile::tempdir().unwrap();
    let sink = Sink::start(0).await;
    let notify = format!(
        r#"command = ["/bin/sh", "{}", "{}"]
command_timeout = "2s"
mail_to = ["postmaster@example.com"]
mail_from = "egress@mx-test.example"
smtp_relay = "{}"
"#,
        script("notify-hang.sh").display(),
        out.path().display(),
        sink.addr
    );
    let m = Milter::spawn(&config("", &notify)).await;
    lock_out(&m, "alice@example.com", "ALICE").await;
    eventually(BOUND, "the command started", async || hang_pids(out.path()).is_some()).await;
    let pids = hang_pids(out.path()).unwrap();
    assert_eq!(pids.len(), 2, "the hook and its child");

    // While the command hangs, the milter answers and the mail goes out.
    let locked = "550 5.7.1 Sending as alice@example.com is suspended; please contact your postmaster";
    for _ in 0..3 {
        let reply = Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.refusal();
        assert_eq!(reply.as_deref(), Some(locked));
    }
    assert!(Mta::send(m.addr, &Msg::from_user("bob@example.com")).await.accepted());
    eventually(BOUND, "the report arrived", async || sink.mails().len() == 1).await;

    // At the timeout the command and everything it started are killed.
    eventually(BOUND, "the hook and its child were killed", async || {
        pids.iter().all(|&p| !alive(p))
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn the_hourly_cap_holds() {
    let out = tempfile::tempdir().unwrap();
    let sink = Sink::start(0).await;
    let notify = format!("{}max_per_hour = 2\n", hook_and_mail(out.path(), &sink));
    let m = Milter::spawn(&config("", &notify)).await;
    for (login, tag) in [
        ("u1@example.com", "UA"),
        ("u2@example.com", "UB"),
        ("u3@example.com", "UC"),
    ] {
        lock_out(&m, login, tag).await;
    }
    eventually(BOUND, "two reports", async || sink.mails().len() == 2).await;
    // An hour later there is room again.
    m.clock.advance(Duration::from_secs(3600));
    lock_out(&m, "u4@example.com", "UD").await;
    eventually(BOUND, "the report after the hour", async || sink.mails().len() == 3).await;
    m.shutdown().await;
    let runs = hook_runs(out.path());
    assert_eq!(
        identities(&runs),
        ["u1@example.com", "u2@example.com", "u4@example.com"]
    );
    let mut subjects: Vec<String> = sink
        .mails()
        .iter()
        .map(|r| r.header("Subject").unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "egress-milter locked u1@example.com: rule lock-messages",
            "egress-milter locked u2@example.com: rule lock-messages",
            "egress-milter locked u4@example.com: rule lock-messages",
        ]
    );
}

#[tokio::test]
async fn the_report_is_retried_when_the_relay_tempfails() {
    let sink = Sink::start(1).await;
    let notify = format!(
        "mail_to = [\"postmaster@example.com\"]\nmail_from = \"egress@mx-test.example\"\nsmtp_relay = \"{}\"\n",
        sink.addr
    );
    let m = Milter::spawn(&config("", &notify)).await;
    lock_out(&m, "alice@example.com", "ALICE").await;
    eventually(BOUND, "the report arrived on the second attempt", async || {
        sink.mails().len() == 1
    })
    .await;
    m.shutdown().await;
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test]
async fn dry_run_and_manual_locks_notify_nothing() {
    let out = tempfile::tempdir().unwrap();
    let sink = Sink::start(0).await;
    let text = format!("mode = \"dry-run\"\n{}", config("", &hook_and_mail(out.path(), &sink)));
    let m = Milter::spawn(&text).await;
    for _ in 0..5 {
        assert!(Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.accepted());
    }
    m.shutdown().await;
    assert!(hook_runs(out.path()).is_empty());
    assert!(sink.mails().is_empty());

    // A lock added by an admin is enforced, and not notified. (A lock rule
    // out of reach, so the messages that probe for the lock cannot trip it.)
    let text = config("", &hook_and_mail(out.path(), &sink)).replace("\"2/1h\"", "\"1000/1h\"");
    let m = Milter::spawn(&text).await;
    let added = cli(
        &m.config_path,
        &["locks", "add", "bob@example.com", "--reason", "phished"],
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    eventually(BOUND, "the manual lock is enforced", async || {
        !Mta::send(m.addr, &Msg::from_user("bob@example.com")).await.accepted()
    })
    .await;
    m.shutdown().await;
    assert!(hook_runs(out.path()).is_empty());
    assert!(sink.mails().is_empty());
}

#[tokio::test]
async fn stopping_the_daemon_kills_a_command_still_running() {
    let out = tempfile::tempdir().unwrap();
    let notify = format!(
        "command = [\"/bin/sh\", \"{}\", \"{}\"]\ncommand_timeout = \"1h\"\n",
        script("notify-hang.sh").display(),
        out.path().display()
    );
    let m = Milter::spawn(&config("", &notify)).await;
    lock_out(&m, "alice@example.com", "ALICE").await;
    eventually(BOUND, "the command started", async || hang_pids(out.path()).is_some()).await;
    let pids = hang_pids(out.path()).unwrap();
    assert!(pids.iter().all(|&p| alive(p)));
    // Returns after the shutdown grace, not after command_timeout.
    m.shutdown().await;
    eventually(BOUND, "the hook and its child were killed", async || {
        pids.iter().all(|&p| !alive(p))
    })
    .await;
}

#[tokio::test]
async fn notify_is_picked_up_on_reload() {
    let out = tempfile::tempdir().unwrap();
    let m = Milter::spawn(&config("", "")).await;
    lock_out(&m, "before@example.com", "B").await;
    let socket = format!("inet:{}", m.addr);
    let notify = format!(
        "command = [\"/bin/sh\", \"{}\", \"{}\"]\n",
        script("notify-hook.sh").display(),
        out.path().display()
    );
    write_config(m.dir.path(), &config("", &notify), &socket);
    m.reload().await;
    // Lock one identity after another until the reloaded section is in force.
    let mut n = 0;
    eventually(BOUND, "a lock after the reload is notified", async || {
        n += 1;
        lock_out(&m, &format!("after{n}@example.com"), "A").await;
        !hook_runs(out.path()).is_empty()
    })
    .await;
    m.shutdown().await;
    let ids = identities(&hook_runs(out.path()));
    assert!(!ids.contains(&"before@example.com".to_string()), "{ids:?}");
    assert!(!ids.is_empty() && ids.iter().all(|i| i.starts_with("after")), "{ids:?}");
}

#[tokio::test]
async fn a_lock_mails_an_arf_report_with_the_last_accepted_message_as_sample() {
    let sink = Sink::start(0).await;
    let notify = format!(
        "arf_to = [\"abuse@example.net\"]\narf_from = \"arf@mx-test.example\"\nsmtp_relay = \"{}\"\nmax_per_hour = 2\n",
        sink.addr
    );
    let m = Milter::spawn(&config("", &notify)).await;
    for i in 1..=3 {
        let mut msg = Msg::from_user("alice@example.com");
        msg.queue_id = format!("ALICE{i}");
        msg.headers = vec![
            ("From".into(), "Alice <alice@example.com>".into()),
            ("Subject".into(), format!("sample {i}")),
        ];
        assert_eq!(Mta::send(m.addr, &msg).await.accepted(), i < 3, "message {i}");
    }
    eventually(BOUND, "the ARF report arrived", async || sink.mails().len() == 1).await;
    let mail = &sink.mails()[0];
    assert_eq!(mail.from, "arf@mx-test.example");
    assert_eq!(mail.rcpts, ["abuse@example.net"]);
    assert!(
        mail.header("Content-Type")
            .is_some_and(|ct| ct.starts_with("multipart/report; report-type=feedback-report;")),
        "{:?}",
        mail.header("Content-Type")
    );
    let data = &mail.data;
    for expected in [
        "Content-Type: message/feedback-report\r\n",
        "Feedback-Type: abuse\r\n",
        "Version: 1\r\n",
        "Original-Mail-From: <alice@example.com>\r\n",
        "Original-Rcpt-To: <friend-",
        "Source-IP: 192.0.2.10\r\n",
        "Reported-Domain: example.com\r\n",
        "Reporting-MTA: dns; mx-test.example\r\n",
        "Content-Type: text/rfc822-headers\r\n",
        // The lock tripped at the end of the third message's headers (this
        // harness sends no DATA; through an MTA it trips at DATA, before
        // any header, and the sample is the last accepted message): the
        // sample is the message that tripped it.
        "Subject: sample 3\r\n",
        "those of message ALICE3 of alice@example.com",
    ] {
        assert!(data.contains(expected), "{expected:?} not in:\n{data}");
    }
    assert!(!data.contains("Subject: sample 1\r\n"), "{data}");

    // The same lock is not reported twice; the hourly cap holds for ARF too.
    for _ in 0..3 {
        assert!(!Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.accepted());
    }
    lock_out(&m, "bob@example.com", "BOB").await;
    lock_out(&m, "carol@example.com", "CAROL").await;
    eventually(BOUND, "bob's report arrived", async || sink.mails().len() == 2).await;
    m.shutdown().await;
    assert_eq!(sink.mails().len(), 2, "carol's is over max_per_hour");
}
