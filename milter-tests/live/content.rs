// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Content verdicts through real Postfix and a real rspamd (issue 19): a
//! login sending GTUBE under every volume limit is locked after the rule's
//! count, a phishing link is its own count, an honest login's mail is
//! scanned ham and never counted, and with rspamd stopped mail still flows
//! and /healthz says the scanner is degraded. The configuration is
//! `fixtures/content.toml`; rspamd is [`RspamdServer`].

use crate::egress::{MilterConfig, free_port};
use crate::rspamd::{PHISHING_HOST, RspamdServer};
use crate::scenarios::{Live, WAIT, assert_accepted, assert_refused, locked_text, password};
use crate::smtp::{Envelope, SendOutcome, Stage, build_message};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The GTUBE test string, which rspamd's core detects (action "reject").
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn send(live: &Live, login: &str, subject: &str, body: &str) -> SendOutcome {
    let rcpt = format!("{subject}@remote.test");
    let content = build_message(
        &[
            ("From", &format!("<{login}>")),
            ("To", &format!("<{rcpt}>")),
            ("Subject", subject),
            ("Message-ID", &format!("<{subject}.{}@client.test>", std::process::id())),
        ],
        body,
    );
    live.send(
        &Envelope::new(live.mta.postfix.submission_port(), login, &[&rcpt])
            .auth(login, &password(login))
            .content(&content),
    )
}

/// A plain HTTP/1.0 GET of the status listener: status code and body.
fn http_get(listen: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(listen).unwrap_or_else(|e| panic!("connect to {listen}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string())
}

/// One series of /metrics (0 when absent).
fn metric(listen: &str, series: &str) -> f64 {
    let (_, body) = http_get(listen, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn spam_locks_a_login_through_postfix_and_rspamd_and_mail_flows_without_it() {
    if crate::harness::skip_unless_live() {
        return;
    }
    let started = Instant::now();
    let mut rspamd = RspamdServer::start();
    let rspamd_up = started.elapsed();
    let status = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let config = MilterConfig::fixture("content.toml")
        .set("scanner.url", rspamd.url().as_str())
        .set("status.listen", status.as_str());
    let live = Live::start(config);

    // An honest login: scanned ham, never counted.
    for i in 0..5 {
        assert_accepted(&send(
            &live,
            "bob@example.com",
            &format!("ham-{i}"),
            "Lunch tomorrow?\n",
        ));
    }
    // A login sending GTUBE under every volume limit: three get through,
    // the fourth trips lock-spam (refused at the end of DATA, locked), the
    // fifth is refused as locked at RCPT.
    for i in 1..=3 {
        assert_accepted(&send(
            &live,
            "mallory@example.com",
            &format!("spam-{i}"),
            &format!("{GTUBE}\n"),
        ));
    }
    let fourth = send(&live, "mallory@example.com", "spam-4", &format!("{GTUBE}\n"));
    assert_refused(
        &fourth,
        Stage::DataEnd,
        550,
        "5.7.1",
        &locked_text("mallory@example.com"),
    );
    let lock = live
        .milter
        .wait_for_lock("mallory@example.com", WAIT)
        .expect("mallory locked");
    assert_eq!(lock.rule.as_deref(), Some("lock-spam"), "{lock:?}");
    let fifth = send(&live, "mallory@example.com", "spam-5", "Hello.\n");
    assert_refused(&fifth, Stage::RcptTo, 550, "5.7.1", &locked_text("mallory@example.com"));

    // A phishing link (the test rspamd's TEST_PHISHING): one an hour.
    let phish = format!("Your account is blocked, log in at http://{PHISHING_HOST}/verify\n");
    assert_accepted(&send(&live, "trudy@example.net", "phish-1", &phish));
    let second = send(&live, "trudy@example.net", "phish-2", &phish);
    assert_refused(
        &second,
        Stage::DataEnd,
        550,
        "5.7.1",
        "Rate limit \"phishing\" exceeded",
    );

    // Bob is still fine: his ham was never counted.
    assert_accepted(&send(&live, "bob@example.com", "ham-5", "See you.\n"));
    assert_eq!(metric(&status, "egress_milter_scans_total{verdict=\"spam\"}"), 4.0);
    assert_eq!(metric(&status, "egress_milter_scans_total{verdict=\"phishing\"}"), 2.0);
    assert_eq!(metric(&status, "egress_milter_scans_total{verdict=\"ham\"}"), 6.0);
    let waits = metric(&status, "egress_milter_scanner_waits_total");
    let mean_ms = 1000.0 * metric(&status, "egress_milter_scanner_wait_seconds_total") / waits;
    assert_eq!(http_get(&status, "/healthz"), (200, "ok\n".into()));

    // rspamd stopped: mail still flows (unscanned), loudly.
    rspamd.stop();
    for i in 0..3 {
        let sent = Instant::now();
        assert_accepted(&send(
            &live,
            "bob@example.com",
            &format!("unscanned-{i}"),
            "Still there?\n",
        ));
        assert!(sent.elapsed() < Duration::from_secs(5), "{:?}", sent.elapsed());
    }
    let (code, body) = http_get(&status, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("degraded: the content scanner"), "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    assert_eq!(metric(&status, "egress_milter_scanner_degraded"), 1.0);
    assert_eq!(
        metric(&status, "egress_milter_scanner_errors_total{cause=\"connect\"}"),
        3.0
    );
    assert!(
        live.milter.log().contains("content scanner failed (cannot connect"),
        "{}",
        live.milter.log_tail(20)
    );
    // The lock holds without the scanner.
    let locked = send(&live, "mallory@example.com", "spam-6", "Hello.\n");
    assert_refused(
        &locked,
        Stage::RcptTo,
        550,
        "5.7.1",
        &locked_text("mallory@example.com"),
    );
    live.assert_all_delivered(5 + 3 + 1 + 1 + 3);
    println!(
        "figures: rspamd up in {:.1} s; mean wait for a verdict {mean_ms:.1} ms over {waits} scans; test {:.1} s",
        rspamd_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
