// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Lock reports handed to a real Postfix by egress-milter's own SMTP client
//! (the `[notify]` mail path), and what comes out at the other end.

use crate::harness::{LiveMta, skip_unless_live};
use crate::sink::ReceivedMessage;
use egress_milter::config::notify::SmtpRelay;
use egress_milter::config::{Counted, Scope};
use egress_milter::locks::file::{LockSource, Timestamp};
use egress_milter::notify::{LockEvent, compose_report, smtp};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_lock_report_passes_through_postfix_intact() {
    if skip_unless_live() {
        return;
    }
    // The relay port, opened to 127.0.0.1 (where the client connects from),
    // stands for the milter-less relay port docs/notifications.md advises.
    let mta = LiveMta::start(|o| o.relay_override("mynetworks=127.0.0.0/8"));
    let now = SystemTime::now();
    let event = LockEvent {
        identity: "jörg@example.com".into(),
        identity_source: "auth".into(),
        source: LockSource::Auto,
        rule: "lock-messages".into(),
        reason: "rule \"lock-messages\" exceeded: 900/900 messages per identity in 1h (identity from auth, queue id 4ABCDEF)".into(),
        counted: Counted::Messages,
        scope: Scope::Identity,
        count: 900,
        limit: 900,
        window: Duration::from_secs(3600),
        locked_at: Timestamp(now),
        expires_at: None,
        queue_ids: vec!["4ABCDEF".into()],
    };
    let from = "egress-milter@mx1.example.com";
    let to = vec!["postmaster@remote.test".to_string(), "security@remote.test".to_string()];
    let report = compose_report(&event, from, &to, "mx1.example.com", now);
    let relay = SmtpRelay {
        host: "127.0.0.1".into(),
        port: mta.postfix.relay_port(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = runtime
        .block_on(smtp::send(&relay, WAIT, "mx1.example.com", from, &to, &report.text))
        .unwrap_or_else(|e| panic!("Postfix did not take the report: {e}\n{}", mta.postfix.log()));
    assert!(refused.is_empty(), "{refused:?}");

    assert!(mta.sink.wait_for_count(1, WAIT), "{}", mta.postfix.log());
    let got = &mta.sink.messages()[0];
    assert_eq!(got.mail_from, from);
    assert_eq!(got.rcpt_to, to);
    // Every header we wrote arrives as written (Postfix only adds its own).
    let sent = ReceivedMessage {
        seq: 0,
        peer: "127.0.0.1:0".parse().unwrap(),
        helo: String::new(),
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: report.text.clone().into_bytes(),
    };
    let received = got.headers();
    for header in sent.headers() {
        assert!(received.contains(&header), "{header:?} not in {received:?}");
    }
    assert_eq!(got.header("Message-ID"), Some(report.message_id.clone()));
    assert_eq!(
        got.header("Subject").as_deref(),
        Some("=?utf-8?q?egress-milter_locked_j=C3=B6rg=40example=2Ecom=3A_rule_lock-?= =?utf-8?q?messages?=")
    );
    // The 8-bit body arrives unchanged (BODY=8BITMIME was offered and used).
    let body = got.body();
    assert!(body.contains("Identity:   jörg@example.com (from auth)\r\n"), "{body}");
    assert!(
        body.contains("    egress-milter locks remove jörg@example.com\r\n"),
        "{body}"
    );
    let (_, sent_body) = report.text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, sent_body);
}
