// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Lock reports handed to a real Postfix by egress-milter's SMTP client
//! (lettre, the `[notify]` mail path), and what comes out at the other end;
//! and the ARF report of a lock tripped through Postfix.

use crate::egress::MilterConfig;
use crate::harness::{LiveMta, skip_unless_live};
use crate::scenarios::{Live, assert_accepted};
use crate::sink::ReceivedMessage;
use egress_milter::config::notify::SmtpRelay;
use egress_milter::config::{Counted, Scope};
use egress_milter::locks::file::{LockSource, Timestamp};
use egress_milter::notify::{LockEvent, USER_AGENT, compose_report, smtp};
use mail_parser::{MessageParser, MimeHeaders, PartType};
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
        sample: None,
    };
    let from = "egress-milter@mx1.example.com";
    let to = vec!["postmaster@remote.test".to_string(), "security@remote.test".to_string()];
    let report = compose_report(&event, from, &to, "mx1.example.com", now).expect("compose the report");
    let relay = SmtpRelay {
        host: "127.0.0.1".into(),
        port: mta.postfix.relay_port(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = runtime
        .block_on(smtp::send(
            &relay,
            WAIT,
            "mx1.example.com",
            from,
            &to,
            report.text.as_bytes(),
        ))
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
    // The non-ASCII subject and body arrive encoded (7-bit clean), and
    // decode to what was written.
    let parsed = MessageParser::default().parse(&got.data).expect("a message");
    assert_eq!(
        parsed.subject(),
        Some("egress-milter locked jörg@example.com: rule lock-messages")
    );
    let body = parsed.body_text(0).expect("a text body");
    assert!(body.contains("Identity:   jörg@example.com (from auth)"), "{body}");
    assert!(
        body.contains("    egress-milter locks remove jörg@example.com"),
        "{body}"
    );
    let (_, sent_body) = report.text.split_once("\r\n\r\n").unwrap();
    assert_eq!(got.body(), sent_body);
}

/// The small-limits fixture with an ARF report for every lock, handed to
/// Postfix's relay port (which has no milter here, as docs/notifications.md
/// advises) and delivered to the sink.
#[test]
fn a_lock_tripped_through_postfix_sends_an_arf_report() {
    if skip_unless_live() {
        return;
    }
    let config = MilterConfig::fixture("small-limits.toml");
    let live = Live::start_with(config.clone(), |o| {
        o.relay_override("mynetworks=127.0.0.0/8")
            .relay_override("smtpd_milters=")
    });
    // The relay's port is known only now: [notify] comes with a reload.
    let relay = format!("127.0.0.1:{}", live.mta.postfix.relay_port());
    let config = config
        .set("notify.arf_to", toml::Value::Array(vec!["abuse@remote.test".into()]))
        .set("notify.arf_from", "egress-milter@mx1.example.com")
        .set("notify.smtp_relay", relay.as_str())
        .set("notify.smtp_timeout", "10s")
        .set("notify.hostname", "mx1.example.com");
    live.milter.write_config(&config.to_toml());
    live.milter.sighup();
    assert!(
        live.milter.wait_for_log(&["configuration reloaded"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );

    // Three accepted, three throttled, the seventh locks (at MAIL FROM).
    let login = "mallory@example.com";
    let outcomes = live.submit_many(login, "arf", 7);
    for outcome in &outcomes[..3] {
        assert_accepted(outcome);
    }
    assert!(!outcomes[6].accepted(), "{}", outcomes[6].transcript);
    assert!(
        live.milter.wait_for_log(&["ARF report sent"], WAIT),
        "{}\n{}",
        live.milter.log_tail(30),
        live.mta.postfix.log_tail(20)
    );
    assert!(
        live.mta.sink.wait_for_count(4, WAIT),
        "{}",
        live.mta.postfix.log_tail(30)
    );
    let reports: Vec<ReceivedMessage> = live
        .mta
        .sink
        .messages()
        .into_iter()
        .filter(|m| m.rcpt_to == ["abuse@remote.test"])
        .collect();
    assert_eq!(reports.len(), 1, "one ARF report per lock");
    let got = &reports[0];
    assert_eq!(got.mail_from, "egress-milter@mx1.example.com");

    let msg = MessageParser::default().parse(&got.data).expect("a message");
    let ct = msg.content_type().expect("a content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("feedback-report"));
    let PartType::Multipart(children) = &msg.parts[0].body else {
        panic!("not multipart: {:?}", msg.parts[0].body);
    };
    let parts: Vec<_> = children.iter().map(|&i| &msg.parts[i as usize]).collect();
    let types: Vec<String> = parts
        .iter()
        .map(|p| {
            let ct = p.content_type().expect("a part's content type");
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(types, ["text/plain", "message/feedback-report", "text/rfc822-headers"]);

    let human = parts[0].text_contents().expect("text");
    assert!(human.contains(&format!("Identity:   {login} (from auth)")), "{human}");
    assert!(
        human.contains("Rule:       lock-messages: 6/6 messages per identity in 1h"),
        "{human}"
    );

    let fields = String::from_utf8_lossy(parts[1].contents()).into_owned();
    let field = |name: &str| -> Vec<String> {
        fields
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .collect()
    };
    assert_eq!(field("Feedback-Type"), ["abuse"], "{fields}");
    assert_eq!(field("User-Agent"), [USER_AGENT]);
    assert_eq!(field("Version"), ["1"]);
    assert_eq!(field("Original-Mail-From"), [format!("<{login}>")]);
    assert_eq!(
        field("Original-Rcpt-To"),
        ["<arf-3@remote.test>"],
        "the last accepted message's"
    );
    assert_eq!(field("Source-IP"), ["127.0.0.1"]);
    assert_eq!(field("Reported-Domain"), ["example.com"]);
    assert_eq!(field("Incidents"), ["6"]);
    assert_eq!(field("Reporting-MTA"), ["dns; mx1.example.com"]);
    assert_eq!(field("Arrival-Date").len(), 1, "{fields}");

    // The sample: the last message Postfix accepted from the identity, its
    // headers as the milter saw them.
    let sample = parts[2].text_contents().expect("text");
    let headers = MessageParser::default()
        .parse_headers(sample.as_bytes())
        .expect("headers");
    assert_eq!(headers.subject(), Some("arf-3"), "{sample}");
    assert_eq!(
        headers.from().and_then(|a| a.first()).and_then(|a| a.address()),
        Some(login)
    );
    assert!(human.contains("The headers below are those of message "), "{human}");
}
