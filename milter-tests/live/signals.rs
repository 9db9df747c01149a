// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The signals beyond volume, through real Postfix (issue 12): distinct
//! recipient domains, one login from many client addresses, the MTA's own
//! bounces charged to the sender (the sink refuses `unknown*@` with 550
//! 5.1.1, Postfix bounces, the bounce passes `non_smtpd_milters` with
//! `internal_mail_filter_classes = bounce`), and sending as a foreign
//! domain. Each scenario also shows who is not touched. The configuration
//! is `fixtures/signals.toml`.

use crate::egress::{MilterConfig, free_port, poll_until};
use crate::scenarios::{Live, WAIT, assert_accepted, assert_refused, locked_text, password};
use crate::smtp::{Envelope, SendOutcome, Stage, build_message};
use std::net::Ipv4Addr;
use std::time::Duration;

/// egress-milter with the signals fixture, and a Postfix wired to it as
/// conf/postfix/main.cf.milter says (its own bounces included), with a
/// status listener for `explain`.
fn start() -> Live {
    let status = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let config = MilterConfig::fixture("signals.toml").set("status.listen", status.as_str());
    Live::start(config)
}

fn send_from(live: &Live, login: &str, from: &str, rcpts: &[&str], source: Option<Ipv4Addr>) -> SendOutcome {
    let content = build_message(
        &[
            ("From", &format!("<{from}>")),
            ("To", &rcpts.join(", ")),
            ("Subject", "signals"),
        ],
        "Hello.\n",
    );
    let mut envelope = Envelope::new(live.mta.postfix.submission_port(), from, rcpts)
        .auth(login, &password(login))
        .content(&content);
    if let Some(source) = source {
        envelope = envelope.source(source);
    }
    live.send(&envelope)
}

fn send(live: &Live, login: &str, rcpts: &[&str]) -> SendOutcome {
    send_from(live, login, login, rcpts, None)
}

#[track_caller]
fn assert_not_locked(live: &Live, identity: &str) {
    assert!(
        !live.milter.locks().entries.iter().any(|e| e.identity == identity),
        "{identity} must not be locked: {:#?}",
        live.milter.locks().entries
    );
}

/// A blaster writing to a new domain with every message is slowed down
/// after 6 domains and locked at the 11th attempt; a person writing 30
/// messages to the same two correspondents' domains is never touched.
#[test]
fn mail_to_ever_new_domains_is_throttled_then_locked() {
    if crate::harness::skip_unless_live() {
        return;
    }
    let live = start();
    for i in 0..30 {
        let to = format!("friend{}@remote{}.test", i % 3, i % 2);
        assert_accepted(&send(&live, "alice@example.com", &[&to]));
    }
    let mut outcomes = Vec::new();
    for i in 0..11 {
        outcomes.push(send(&live, "blaster@example.com", &[&format!("victim@domain{i}.test")]));
    }
    for outcome in &outcomes[..6] {
        assert_accepted(outcome);
    }
    for outcome in &outcomes[6..10] {
        assert_refused(
            outcome,
            Stage::RcptTo,
            451,
            "4.7.1",
            "Rate limit \"recipient-domains\" exceeded for blaster@example.com",
        );
    }
    assert_refused(
        &outcomes[10],
        Stage::RcptTo,
        550,
        "5.7.1",
        &locked_text("blaster@example.com"),
    );
    let lock = live
        .milter
        .wait_for_lock("blaster@example.com", WAIT)
        .expect("blaster locked");
    assert_eq!(lock.rule.as_deref(), Some("lock-recipient-domains"));
    assert!(lock.reason.contains("distinct-recipient-domains"), "{}", lock.reason);
    assert_not_locked(&live, "alice@example.com");
    live.assert_all_delivered(30 + 6);
}

/// One login used from five client addresses within the hour is locked at
/// the fifth; another login sending as much from one address is not.
#[test]
fn one_login_from_many_client_addresses_is_locked() {
    if crate::harness::skip_unless_live() {
        return;
    }
    let live = start();
    for i in 1..=4u8 {
        let source = Ipv4Addr::new(127, 0, 1, i);
        assert_accepted(&send_from(
            &live,
            "mallory@example.com",
            "mallory@example.com",
            &["x@remote.test"],
            Some(source),
        ));
        assert_accepted(&send(&live, "bob@example.com", &["x@remote.test"]));
        // The same address again is no new address.
        assert_accepted(&send_from(
            &live,
            "mallory@example.com",
            "mallory@example.com",
            &["x@remote.test"],
            Some(source),
        ));
    }
    let fifth = send_from(
        &live,
        "mallory@example.com",
        "mallory@example.com",
        &["x@remote.test"],
        Some(Ipv4Addr::new(127, 0, 1, 5)),
    );
    // Its attempt is counted at DATA, where the lock trips.
    assert_refused(&fifth, Stage::Data, 550, "5.7.1", &locked_text("mallory@example.com"));
    let lock = live
        .milter
        .wait_for_lock("mallory@example.com", WAIT)
        .expect("mallory locked");
    assert_eq!(lock.rule.as_deref(), Some("lock-client-addresses"));
    assert_not_locked(&live, "bob@example.com");
}

/// A mailing where most recipients are unknown at the destination: the
/// sink refuses them with 550 5.1.1, Postfix bounces them to the sender,
/// and those bounces (null sender, through `non_smtpd_milters`) are charged
/// to the login that sent the mail, which is locked once more than 4
/// failed and they are at least 30% of what it sent. A sender whose list
/// has one stale address in ten is not. A DSN forged over SMTP, naming the
/// honest sender's queue ids, is charged to no one.
#[test]
fn bounces_of_unknown_recipients_lock_the_sender() {
    if crate::harness::skip_unless_live() {
        return;
    }
    let live = start();
    // carol: 10 messages of 3 recipients, 4 of the 30 unknown (13%).
    for i in 0..10 {
        let unknown = format!("unknown-{i}@list.test");
        let known = [format!("a{i}@list.test"), format!("b{i}@list.test")];
        let rcpts: Vec<&str> = if i % 3 == 0 {
            vec![&known[0], &known[1], &unknown]
        } else {
            vec![&known[0], &known[1], "c@list.test"]
        };
        assert_accepted(&send(&live, "carol@example.org", &rcpts));
    }
    // trudy: messages of 2 recipients, one of them unknown (50%).
    for i in 0..5 {
        let unknown = format!("unknown-{i}@list.test");
        assert_accepted(&send(&live, "trudy@example.net", &["known@list.test", &unknown]));
    }
    assert!(
        live.milter.wait_for_lock("trudy@example.net", WAIT).is_some(),
        "trudy locked by her bounces\n{}",
        live.milter.log_tail(40)
    );
    let lock = live
        .milter
        .locks()
        .entries
        .into_iter()
        .find(|e| e.identity == "trudy@example.net");
    let lock = lock.expect("trudy's lock");
    assert_eq!(lock.rule.as_deref(), Some("lock-bounces"));
    assert!(lock.reason.contains("bounces"), "{}", lock.reason);
    assert_refused(
        &send(&live, "trudy@example.net", &["known@list.test"]),
        Stage::RcptTo,
        550,
        "5.7.1",
        &locked_text("trudy@example.net"),
    );
    // Every bounce reached its sender (the sink) all the same.
    assert!(
        poll_until(WAIT, || live.mta.sink.messages_to("trudy@example.net").len() >= 5),
        "trudy's bounces delivered"
    );
    assert!(
        live.milter.wait_for_log(&["bounce charged", "carol@example.org"], WAIT),
        "carol's bounces are charged too"
    );

    // A DSN in Postfix's format naming carol's queue ids, sent by another
    // user over SMTP, with the null sender: not the MTA's bounce.
    let carol_ids: Vec<String> = live
        .mta
        .sink
        .messages()
        .iter()
        .filter(|m| m.mail_from == "carol@example.org")
        .filter_map(|m| queue_id_of(&m.header_values("Received")))
        .collect();
    assert!(!carol_ids.is_empty());
    for id in &carol_ids {
        let forged = forged_dsn(id);
        let envelope = Envelope::new(live.mta.postfix.submission_port(), "", &["carol@example.org"])
            .auth("mallory@example.com", &password("mallory@example.com"))
            .content(&forged);
        assert_accepted(&live.send(&envelope));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_not_locked(&live, "carol@example.org");
    let explained = live.milter.cli(&["explain", "carol@example.org"]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        text.contains("lock-bounces: 4 bounced of 30 recipients sent in 1h (13.3%); acts at 30% and over 4"),
        "{text}\n{}",
        String::from_utf8_lossy(&explained.stderr)
    );
    assert!(text.contains("held; 4 bounced"), "the activity shows them too: {text}");
}

/// The queue id in Postfix's own `Received: ... with ESMTPSA id QUEUEID`.
fn queue_id_of(received: &[String]) -> Option<String> {
    received.iter().find_map(|r| {
        let (_, rest) = r.split_once(" id ")?;
        let id: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        (!id.is_empty()).then_some(id)
    })
}

fn forged_dsn(queue_id: &str) -> String {
    format!(
        "From: MAILER-DAEMON@example.com (Mail Delivery System)\r\n\
         To: carol@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mta.egress-test.invalid\r\nX-Postfix-Queue-ID: {queue_id}\r\n\r\n\
         Final-Recipient: rfc822; x1@list.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         Final-Recipient: rfc822; x2@list.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         Final-Recipient: rfc822; x3@list.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         --B--\r\n"
    )
}

/// A login sending as a domain that is not its own: once in a day passes
/// (counted), the second time is rejected, whether the envelope sender or
/// only the `From:` header is foreign. Its own address, and the domain its
/// override allows, are never counted.
#[test]
fn sending_as_a_foreign_domain_is_counted_and_refused() {
    if crate::harness::skip_unless_live() {
        return;
    }
    let live = start();
    for _ in 0..5 {
        assert_accepted(&send(&live, "alice@example.com", &["x@remote.test"]));
        assert_accepted(&send_from(
            &live,
            "carol@example.org",
            "orders@shop.example",
            &["x@remote.test"],
            None,
        ));
    }
    assert_accepted(&send_from(
        &live,
        "alice@example.com",
        "ceo@bank.test",
        &["x@remote.test"],
        None,
    ));
    let second = send_from(&live, "alice@example.com", "ceo@bank.test", &["x@remote.test"], None);
    assert_refused(
        &second,
        Stage::DataEnd,
        550,
        "5.7.1",
        "Rate limit \"foreign-senders\" exceeded for alice@example.com",
    );
    // Right envelope, foreign From: header.
    let content = build_message(
        &[
            ("From", "\"Bank\" <ceo@bank.test>"),
            ("To", "x@remote.test"),
            ("Subject", "signals"),
        ],
        "Hello.\n",
    );
    let envelope = Envelope::new(
        live.mta.postfix.submission_port(),
        "alice@example.com",
        &["x@remote.test"],
    )
    .auth("alice@example.com", &password("alice@example.com"))
    .content(&content);
    let outcome = live.send(&envelope);
    assert_eq!(outcome.refused_at(), Some(Stage::DataEnd), "{}", outcome.transcript);
    assert_not_locked(&live, "alice@example.com");
    assert_accepted(&send(&live, "alice@example.com", &["x@remote.test"]));
}
