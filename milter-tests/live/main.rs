// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The live-MTA suite: egress-milter driven through a real, private Postfix.
//! See milter-tests/live/README.md. These tests run only with
//! `EGRESS_MILTER_LIVE=1`, as root, with Postfix installed
//! (milter-tests/install-deps.sh); otherwise each one says it is skipped.

mod content;
mod desk;
mod detection;
mod dovecot;
mod egress;
mod fleet;
mod harness;
mod holes;
mod local_door;
mod notify;
#[path = "../common/ports.rs"]
mod ports;
mod postfix;
mod queue_tools;
mod redis;
mod retries;
mod rspamd;
mod scenarios;
mod sendmail;
mod sendmail_scenarios;
mod signals;
mod sink;
mod smtp;
mod trust;

use harness::{LiveMta, skip_unless_live};
use postfix::{TRUSTED_UPSTREAM, UNTRUSTED_CLIENT};
use smtp::{Envelope, Stage, build_message, send_message};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Upper bound for anything Postfix does here (deliveries take milliseconds).
const WAIT: Duration = Duration::from_secs(30);

/// The harness itself, with no milter: mail goes in through both front doors
/// and comes out at the sink intact; what must be refused is refused.
#[test]
fn harness_self_test_without_milter() {
    if skip_unless_live() {
        return;
    }
    let started = Instant::now();
    let mut mta = LiveMta::start(|o| {
        o.user("alice@example.com", "alice-secret")
            .user("bob@example.org", "bob-secret")
    });
    let start_time = started.elapsed();
    let postfix = &mta.postfix;
    assert_eq!(
        postfix.postconf("relayhost").expect("postconf"),
        format!("[127.0.0.1]:{}", mta.sink.port())
    );
    assert_eq!(postfix.postconf("smtpd_milters").expect("postconf"), "");

    // 1. Authenticated submission.
    let submitted = build_message(
        &[
            ("From", "Alice <alice@example.com>"),
            ("To", "<carol@remote.test>"),
            ("Subject", "submission via AUTH"),
            ("X-Harness", "folded\r\n\tvalue"),
            ("Message-ID", "<self-test-1@client.test>"),
        ],
        "First line.\n.A line starting with a dot\n..and one with two\n\nLast line.\n",
    );
    let outcome = send_message(
        &Envelope::new(
            postfix.submission_port(),
            "alice@example.com",
            &["carol@remote.test", "dave@remote.test"],
        )
        .auth("alice@example.com", "alice-secret")
        .content(&submitted),
    )
    .expect("submission conversation");
    assert!(
        outcome.accepted(),
        "authenticated submission refused:\n{}",
        outcome.transcript
    );
    assert_eq!(outcome.auth.as_ref().map(|r| r.code), Some(235));
    let submitted_id = outcome.queue_id().expect("queue id of the submission");

    // 2. The trusted upstream MTA, from 127.0.0.2, on the relay port.
    let relayed = build_message(
        &[
            ("From", "<bob@example.org>"),
            ("To", "<erin@remote.test>"),
            ("Subject", "relayed by the trusted upstream"),
            ("X-Authenticated-User", "bob@example.org"),
        ],
        "Relayed body.\n",
    );
    let outcome = send_message(
        &Envelope::new(postfix.relay_port(), "bob@example.org", &["erin@remote.test"])
            .source(TRUSTED_UPSTREAM)
            .content(&relayed),
    )
    .expect("relay conversation");
    assert!(
        outcome.accepted(),
        "relay from 127.0.0.2 refused:\n{}",
        outcome.transcript
    );

    // 3. Submission without AUTH: refused relay.
    let outcome = send_message(&Envelope::new(
        postfix.submission_port(),
        "alice@example.com",
        &["x@remote.test"],
    ))
    .expect("unauthenticated submission conversation");
    assert_eq!(outcome.refused_at(), Some(Stage::RcptTo), "{}", outcome.transcript);
    let refusal = outcome.refusal().expect("refusal");
    assert_eq!(
        (refusal.code, refusal.enhanced.as_deref()),
        (554, Some("5.7.1")),
        "{refusal}"
    );

    // 4. The relay port from an untrusted address (127.0.0.1): refused relay.
    let outcome = send_message(
        &Envelope::new(postfix.relay_port(), "bob@example.org", &["x@remote.test"]).source(UNTRUSTED_CLIENT),
    )
    .expect("untrusted relay conversation");
    assert_eq!(outcome.refused_at(), Some(Stage::RcptTo), "{}", outcome.transcript);
    assert_eq!(outcome.refusal().map(|r| r.code), Some(554));

    // 5. Wrong password, and a login without its realm: AUTH fails.
    for (login, password) in [("alice@example.com", "wrong"), ("alice", "alice-secret")] {
        let outcome = send_message(
            &Envelope::new(postfix.submission_port(), "alice@example.com", &["x@remote.test"]).auth(login, password),
        )
        .expect("failed-auth conversation");
        assert_eq!(
            outcome.refused_at(),
            Some(Stage::Auth),
            "{login}: {}",
            outcome.transcript
        );
        assert_eq!(outcome.refusal().map(|r| r.code), Some(535), "{login}");
    }

    // Exactly the two accepted messages arrive, intact.
    assert!(
        mta.sink.wait_for_count(2, WAIT),
        "sink got {} of 2 messages\n{}",
        mta.sink.count(),
        postfix.log_tail(30)
    );
    assert!(
        postfix.wait_queue_empty(WAIT).expect("postqueue"),
        "queue not empty: {:?}",
        postfix.queue()
    );
    let messages = mta.sink.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let by_subject = |subject: &str| {
        messages
            .iter()
            .find(|m| m.header("Subject").as_deref() == Some(subject))
            .expect("message at the sink")
    };

    let first = by_subject("submission via AUTH");
    assert_eq!(first.mail_from, "alice@example.com");
    assert_eq!(first.rcpt_to, ["carol@remote.test", "dave@remote.test"]);
    assert_eq!(first.header("X-Harness").as_deref(), Some("folded value"));
    assert_eq!(first.header("Message-ID").as_deref(), Some("<self-test-1@client.test>"));
    assert!(
        first.text().contains("X-Harness: folded\r\n\tvalue\r\n"),
        "folding lost:\n{}",
        first.text()
    );
    assert_eq!(
        first.body(),
        "First line.\r\n.A line starting with a dot\r\n..and one with two\r\n\r\nLast line.\r\n"
    );
    // Postfix's trace header records the queue ID and the authentication.
    let received = first.header_values("Received");
    assert!(received.iter().any(|r| r.contains(&submitted_id)), "{received:?}");
    assert!(received[0].contains("with ESMTPA"), "{received:?}");

    let second = by_subject("relayed by the trusted upstream");
    assert_eq!(
        (second.mail_from.as_str(), second.rcpt_to.as_slice()),
        ("bob@example.org", &["erin@remote.test".to_string()][..])
    );
    assert_eq!(
        second.header("X-Authenticated-User").as_deref(),
        Some("bob@example.org")
    );
    assert_eq!(second.body(), "Relayed body.\r\n");
    assert!(
        second.header("Received").is_some_and(|r| r.contains("[127.0.0.2]")),
        "{:?}",
        second.header("Received")
    );

    // The log shows the SASL identity that smtpd hands to milters as {auth_authen}.
    let log = postfix.log();
    assert!(
        log.contains("sasl_method=PLAIN, sasl_username=alice@example.com"),
        "{}",
        postfix.log_tail(40)
    );

    // Stop explicitly to measure it (Drop would do the same).
    let stopping = Instant::now();
    mta.postfix.stop();
    let stop_time = stopping.elapsed();
    println!("postfix start (incl. sink): {start_time:?}, stop: {stop_time:?}");
    assert!(!master_running(&mta), "postfix still running after stop()");
}

/// Whether a master process still runs for this instance.
fn master_running(mta: &LiveMta) -> bool {
    Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(mta.postfix.config_dir())
        .arg("status")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The shipped master.cf example parses, and really sets the milter on the
/// submission service only.
#[test]
fn master_cf_submission_example_is_valid() {
    if skip_unless_live() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/postfix/master.cf.submission");
    std::fs::copy(&example, dir.path().join("master.cf")).expect("copy master.cf.submission");
    std::fs::write(
        dir.path().join("main.cf"),
        // The main.cf of that recipe: smtpd_milters left out (non_smtpd_milters stays).
        postfix::MAIN_CF_MILTER
            .lines()
            .map(|l| {
                if l.starts_with("smtpd_milters") {
                    format!("#{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>(),
    )
    .expect("write main.cf");
    let postconf = |args: &[&str]| postfix::postconf_in(dir.path(), args);
    assert_eq!(
        postconf(&["-P", "-h", "submission/inet/smtpd_milters"]),
        "unix:/egress-milter/milter.sock"
    );
    assert_eq!(postconf(&["-P", "-h", "submission/inet/smtpd_sasl_auth_enable"]), "yes");
    assert!(postconf(&["-M", "submission/inet"]).contains("smtpd"));
    // The main.cf lines are all known parameters with the intended values.
    assert_eq!(postconf(&["-h", "milter_default_action"]), "tempfail");
    assert_eq!(postconf(&["-h", "milter_protocol"]), "6");
    assert_eq!(postconf(&["-h", "smtpd_milters"]), "");
    assert_eq!(
        postconf(&["-h", "non_smtpd_milters"]),
        "unix:/egress-milter/milter.sock"
    );
    assert!(postconf(&["-h", "milter_mail_macros"]).contains("{auth_authen}"));
}

/// A Postfix that cannot start is reported with its log, promptly, and
/// leaves nothing running.
#[test]
fn start_failure_is_reported() {
    if skip_unless_live() {
        return;
    }
    let sink = sink::SmtpSink::start().expect("sink");
    let started = Instant::now();
    let result = postfix::PostfixInstance::start(
        // An address of no local interface: the master cannot listen.
        postfix::PostfixOptions::new(sink.port()).main_cf("inet_interfaces = 192.0.2.1"),
    );
    let err = match result {
        Ok(instance) => panic!("a broken main.cf started: {}", instance.log_tail(20)),
        Err(err) => err.to_string(),
    };
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("postfix start failed"), "{err}");
    assert!(err.contains("no local interface found for 192.0.2.1"), "{err}");
    println!("reported as: {err}");
}

/// The queue helpers: a message put on hold (by a Postfix HOLD action turned
/// on with set_main_cf + reload) shows up in `queue()`, and reaches the sink
/// only after `release_hold()`.
#[test]
fn queue_hold_and_release() {
    if skip_unless_live() {
        return;
    }
    let mta = LiveMta::start(|o| o.user("alice@example.com", "alice-secret"));
    let postfix = &mta.postfix;
    postfix
        .set_main_cf(&["smtpd_end_of_data_restrictions = check_sender_access inline:{held@example.com=HOLD}"])
        .expect("postconf -e");
    postfix.reload().expect("postfix reload");
    assert!(
        postfix.wait_for_log("reload -- version", WAIT),
        "{}",
        postfix.log_tail(20)
    );

    let outcome = send_message(
        &Envelope::new(postfix.submission_port(), "held@example.com", &["frank@remote.test"])
            .auth("alice@example.com", "alice-secret"),
    )
    .expect("submission conversation");
    assert!(outcome.accepted(), "{}", outcome.transcript);
    let queue_id = outcome.queue_id().expect("queue id");

    let queue = postfix
        .wait_for_queue(WAIT, |q| q.iter().any(|e| e.queue_name == "hold"))
        .expect("postqueue");
    let queue = queue.unwrap_or_else(|| panic!("nothing on hold: {:?}\n{}", postfix.queue(), postfix.log_tail(20)));
    assert_eq!(queue.len(), 1, "{queue:?}");
    let held = &queue[0];
    assert_eq!(
        (held.queue_id.as_str(), held.sender.as_str()),
        (queue_id.as_str(), "held@example.com")
    );
    assert_eq!(
        held.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
        ["frank@remote.test"]
    );
    assert_eq!(postfix.queue_named("hold").expect("postqueue").len(), 1);
    assert_eq!(mta.sink.count(), 0, "a held message was delivered");

    postfix.release_hold().expect("postsuper -H ALL");
    assert!(
        mta.sink.wait_for_count(1, WAIT),
        "released message not delivered\n{}",
        postfix.log_tail(20)
    );
    assert_eq!(mta.sink.messages()[0].mail_from, "held@example.com");
    assert!(postfix.wait_queue_empty(WAIT).expect("postqueue"));
    postfix.flush().expect("postqueue -f");
}

/// A recipient the sink does not know is refused with 550 5.1.1, and
/// Postfix bounces it: the sender gets a DSN from the null sender naming
/// the address and the status, while the other recipient gets the message.
#[test]
fn unknown_recipient_at_the_sink_bounces_to_the_sender() {
    if skip_unless_live() {
        return;
    }
    let mta = LiveMta::start(|o| o.user("alice@example.com", "alice-secret"));
    let postfix = &mta.postfix;
    let outcome = send_message(
        &Envelope::new(
            postfix.submission_port(),
            "alice@example.com",
            &["carol@remote.test", "unknown-dave@remote.test"],
        )
        .auth("alice@example.com", "alice-secret"),
    )
    .expect("submission conversation");
    assert!(outcome.accepted(), "{}", outcome.transcript);

    assert!(
        mta.sink.wait_for_count(2, WAIT),
        "sink got {} of 2 messages (the message and the DSN)\n{}",
        mta.sink.count(),
        postfix.log_tail(30)
    );
    assert!(
        postfix.wait_queue_empty(WAIT).expect("postqueue"),
        "{:?}",
        postfix.queue()
    );
    let messages = mta.sink.messages();
    let delivered: Vec<_> = messages.iter().filter(|m| m.mail_from == "alice@example.com").collect();
    assert_eq!(delivered.len(), 1, "{messages:#?}");
    assert_eq!(delivered[0].rcpt_to, ["carol@remote.test"]);
    let dsns: Vec<_> = messages.iter().filter(|m| m.mail_from.is_empty()).collect();
    assert_eq!(dsns.len(), 1, "{messages:#?}");
    assert_eq!(dsns[0].rcpt_to, ["alice@example.com"]);
    assert!(
        dsns[0]
            .header("Content-Type")
            .is_some_and(|c| c.contains("multipart/report") && c.contains("delivery-status")),
        "{:?}",
        dsns[0].header("Content-Type")
    );
    let text = dsns[0].text();
    assert!(
        text.contains("Final-Recipient: rfc822; unknown-dave@remote.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert_eq!(mta.sink.refused_unknown(), 1);
    assert!(
        postfix
            .log()
            .contains("status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1"),
        "{}",
        postfix.log_tail(20)
    );
}
