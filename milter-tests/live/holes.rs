// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The holes of issue 10 (items 1, 2, 3 and 6) driven the way they were
//! found: through a real Postfix, with the shipped wiring
//! (`conf/postfix/main.cf.milter`, so `smtpd_milters` in main.cf covers
//! every smtpd port) and the shipped example or the small-limits fixture.
//! Each test is a story that failed before the fix (commit bd668ef): its
//! documentation says what that code did. The table in docs/testing.md
//! lists what each one checks.

use crate::egress::MilterConfig;
use crate::harness::skip_unless_live;
use crate::scenarios::{
    Live, WAIT, assert_accepted, assert_refused, locked_text, message, password, subjects, throttled_text,
};
use crate::smtp::{Envelope, SendOutcome, Stage, open_session, send_transaction};
use egress_milter::locks::file::LockSource;

/// `n` transactions from `login` over one authenticated session of the
/// submission port, as a bot sends them; `envelope(i)` makes the `i`-th
/// (from 1). Every outcome, in order.
fn session_of(live: &Live, login: &str, n: usize, envelope: impl Fn(usize) -> Envelope) -> Vec<SendOutcome> {
    let port = live.mta.postfix.submission_port();
    let mut client = open_session(&Envelope::new(port, login, &[]).auth(login, &password(login)))
        .unwrap_or_else(|e| panic!("session of {login}: {e}\n{}", live.mta.postfix.log_tail(20)));
    let outcomes = (1..=n)
        .map(|i| send_transaction(&mut client, &envelope(i)).expect("SMTP transaction"))
        .collect();
    let _ = client.quit();
    outcomes
}

// ---------------------------------------------------------------------------
// Item 1: the null sender.

/// A SASL user sending with `MAIL FROM:<>` is counted like any other
/// sender (small limits: 3 messages an hour, lock at 6 attempts). Over one
/// session, 20 null-sender messages with 2 recipients each: 3 accepted,
/// the 4th to 6th `451 4.7.1 Rate limit "messages-per-hour" exceeded` at
/// MAIL, the 7th locks the login (`550 5.7.1 Sending as ... is suspended`
/// at RCPT) and so is every later one; the login is in the lock list; its
/// next message with a sender is refused as locked too; the sink got
/// exactly the 3 accepted, with the null sender.
///
/// Before the fix (bd668ef), null-sender mail was not counted at all with
/// the default `count_bounces = false`: all 20 were accepted and delivered
/// and nothing was locked (the issue: 60 of 60 against limits of 5 a
/// minute and a lock rule at 50).
#[test]
fn a_sasl_users_null_sender_mail_is_throttled_then_locked() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let mallory = "mallory@example.com";
    let port = live.mta.postfix.submission_port();
    let rcpts = ["victim1@remote.test", "victim2@remote.test"];
    let outcomes = session_of(&live, mallory, 20, |i| {
        Envelope::new(port, "", &rcpts).content(&message(mallory, &rcpts, &format!("null-sender-{i}"), &[]))
    });
    for outcome in &outcomes[..3] {
        assert_accepted(outcome);
        assert_eq!(outcome.accepted_recipients(), rcpts, "{}", outcome.transcript);
    }
    for outcome in &outcomes[3..6] {
        assert!(outcome.transcript.contains("C: MAIL FROM:<>"), "{}", outcome.transcript);
        assert_refused(
            outcome,
            Stage::MailFrom,
            451,
            "4.7.1",
            &throttled_text("messages-per-hour", mallory),
        );
    }
    for outcome in &outcomes[6..] {
        assert_refused(outcome, Stage::RcptTo, 550, "5.7.1", &locked_text(mallory));
    }

    let entry = live
        .milter
        .wait_for_lock(mallory, WAIT)
        .unwrap_or_else(|| panic!("{mallory} not locked: {:?}", live.milter.locks()));
    assert_eq!(entry.source, LockSource::Auto);
    assert_eq!(entry.rule.as_deref(), Some("lock-messages"));
    assert!(entry.reason.contains("(identity from auth"), "{}", entry.reason);
    // Later mail, with a sender this time: refused as locked.
    assert_refused(
        &live.send(&live.submission(mallory, &["x@remote.test"], "after-the-lock")),
        Stage::RcptTo,
        550,
        "5.7.1",
        &locked_text(mallory),
    );

    live.assert_all_delivered(3);
    for message in live.mta.sink.messages() {
        assert_eq!(message.mail_from, "", "{:?}", message.header("Subject"));
        assert_eq!(message.rcpt_to, rcpts);
    }
    let mut got = subjects(&live.mta.sink.messages());
    got.sort_unstable();
    assert_eq!(got, ["null-sender-1", "null-sender-2", "null-sender-3"]);
    assert_eq!(
        live.milter
            .log_lines(&["accepted", &format!("identity={mallory} "), "source=auth"])
            .len(),
        3
    );
}
