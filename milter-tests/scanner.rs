// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Content verdicts at the protocol level, against a fake rspamd in the
//! test: what is negotiated and sent to the scanner, spam counted per
//! identity up to a lock, a retry not counted twice, phishing and dry
//! runs, the size bound, and a scanner that is silent, answers 500 or
//! garbage: mail flows within the timeout, loudly (metrics, /healthz, log).

use crate::common::*;
use crate::status::{Daemon, start};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use indymilter_test::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the fake rspamd answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// rspamd's JSON: "reject" with GTUBE for a body with "GTUBE-TEST",
    /// the PHISHING symbol for "phish-test", else "no action".
    Verdicts,
    /// Reads the request and never answers.
    Silent,
    /// HTTP 500.
    Error,
    /// 200 with a body that is not JSON.
    Garbage,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
struct Seen {
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A fake rspamd normal worker on a loopback port.
struct FakeRspamd {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRspamd {
    async fn start() -> FakeRspamd {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Verdicts));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (m, s) = (m.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (m, s) = (m.clone(), s.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &m, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeRspamd { addr, mode, seen, task }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeRspamd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    mode: &Mutex<Mode>,
    seen: &Mutex<Vec<Seen>>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    seen.lock().unwrap().push(Seen {
        headers,
        body: body.clone(),
    });
    let mode = *mode.lock().unwrap();
    let reply = |status: u16, text: String| {
        hyper::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
            .unwrap()
    };
    if path != "/checkv2" {
        return reply(404, "no such path".into());
    }
    match mode {
        Mode::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            reply(200, String::new())
        }
        Mode::Error => reply(500, "{\"error\":\"internal\"}".into()),
        Mode::Garbage => reply(200, "<html>this is no rspamd</html>".into()),
        Mode::Verdicts => {
            let json = if body.contains("GTUBE-TEST") {
                r#"{"is_skipped":false,"score":0.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}}}"#
            } else if body.contains("phish-test") {
                r#"{"is_skipped":false,"score":7.5,"required_score":15.0,"action":"no action","symbols":{"PHISHING":{"name":"PHISHING","score":7.5}}}"#
            } else {
                r#"{"is_skipped":false,"score":0.1,"required_score":15.0,"action":"no action","symbols":{"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1}}}"#
            };
            reply(200, json.into())
        }
    }
}

/// The identities on the lock list.
fn locked(d: &Daemon) -> Vec<String> {
    let path = d.dir.path().join("locks.toml");
    if !path.exists() {
        return Vec::new();
    }
    read_lock_list(&path)
        .entries
        .iter()
        .map(|e| e.identity.clone())
        .collect()
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The value of one series of /metrics (0 if absent).
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The site's rules: spam throttled at 2 and locked past 3 in ten minutes,
/// phishing rejected past 1 an hour, virus only logged (a dry run), and a
/// volume limit no test reaches.
fn config(fake: &FakeRspamd, extra: &str) -> String {
    format!(
        r#"
[scanner]
url = "http://{}"
timeout = "500ms"
max_message_size = 4096
{extra}

[[rule]]
name = "spam-throttle"
count = "spam"
rate = "2/10m"
action = "tempfail"

[[rule]]
name = "lock-spam"
count = "spam"
rate = "3/10m"
action = "lock"

[[rule]]
name = "phishing"
count = "phishing"
rate = "1/1h"
action = "reject"

[[rule]]
name = "virus"
count = "virus"
rate = "1/1h"
action = "lock"
dry_run = true

[[rule]]
name = "messages-per-hour"
rate = "1000/1h"
action = "tempfail"
"#,
        fake.addr
    )
}

const GTUBE: &str = "Buy now.\r\nGTUBE-TEST\r\n";
const HAM: &str = "Hello Bob,\r\nsee you tomorrow.\r\n";

fn spam(login: &str) -> Msg {
    Msg::from_user(login).header("Subject", "offer").body(GTUBE)
}

fn ham(login: &str) -> Msg {
    Msg::from_user(login).body(HAM)
}

#[tokio::test]
async fn bodies_are_asked_for_only_with_a_scanner_and_content_rules() {
    let fake = FakeRspamd::start().await;
    let without = Milter::spawn(&fixture("escalation.toml")).await;
    assert!(without.mta().await.negotiated_opts().contains(ProtoOpts::NO_BODY));
    // A scanner alone (a warning at start) reads no body either.
    let alone = Milter::spawn(&format!(
        "[scanner]\nurl = \"http://{}\"\n\n[[rule]]\nname = \"m\"\nrate = \"10/1m\"\naction = \"tempfail\"\n",
        fake.addr
    ))
    .await;
    assert!(
        alone
            .mta()
            .await
            .negotiated_opts()
            .contains(ProtoOpts::NO_BODY | ProtoOpts::NO_HELO)
    );
    assert!(Mta::send(alone.addr, &spam("alice@example.com")).await.accepted());
    let with = Milter::spawn(&config(&fake, "")).await;
    let opts = with.mta().await.negotiated_opts();
    assert!(
        !opts.contains(ProtoOpts::NO_BODY) && !opts.contains(ProtoOpts::NO_HELO),
        "{opts:?}"
    );
    // Inbound mail (no login, from the internet) is never scanned.
    let inbound = Msg::unauthenticated([198, 51, 100, 7], "someone@example.net").body(GTUBE);
    assert!(Mta::send(with.addr, &inbound).await.accepted());
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_is_counted_per_identity_up_to_a_lock_and_ham_never() {
    let fake = FakeRspamd::start().await;
    let d = start(&config(&fake, "")).await;
    // What rspamd is told: the envelope in its headers, the message as
    // received (the headers the milter saw, a blank line, the body).
    let mut first = spam("alice@example.com").to(&["bob@example.net", "carol@example.org"]);
    first.queue_id = "4QID1".into();
    assert!(Mta::send(d.process.addr, &first).await.accepted());
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.header("from"), ["alice@example.com"]);
    assert_eq!(s.header("rcpt"), ["bob@example.net", "carol@example.org"]);
    assert_eq!(s.header("user"), ["alice@example.com"]);
    assert_eq!(s.header("ip"), ["192.0.2.10"]);
    assert_eq!(s.header("queue-id"), ["4QID1"]);
    assert_eq!(s.body, format!("Subject: hello\r\nSubject: offer\r\n\r\n{GTUBE}"));

    // Ham is scanned and never counted: any number of honest messages.
    for _ in 0..6 {
        assert!(Mta::send(d.process.addr, &ham("bob@example.com")).await.accepted());
    }
    // The second spam fits the throttle, the third is refused (4xx) and
    // counted all the same, the fourth trips the lock rule.
    assert!(Mta::send(d.process.addr, &spam("alice@example.com")).await.accepted());
    let third = Mta::send(d.process.addr, &spam("alice@example.com")).await;
    assert!(third.tempfailed(), "{third:?}");
    assert!(third.refusal().unwrap().contains("spam-throttle"), "{third:?}");
    let fourth = Mta::send(d.process.addr, &spam("alice@example.com")).await;
    assert!(fourth.refusal().unwrap().starts_with("550 "), "{fourth:?}");
    // Locked: even her ham is refused now, at RCPT, unscanned.
    let scanned = fake.seen().len();
    let after = Mta::send(d.process.addr, &ham("alice@example.com")).await;
    assert!(after.refusal().unwrap().contains("is suspended"), "{after:?}");
    assert_eq!(fake.seen().len(), scanned);
    // Bob was never counted.
    assert!(Mta::send(d.process.addr, &ham("bob@example.com")).await.accepted());

    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"spam\"}"), 4.0);
    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"ham\"}"), 7.0);
    assert_eq!(metric(d.status, "egress_milter_scanner_degraded"), 0.0);
    assert!(metric(d.status, "egress_milter_scanner_waits_total") >= 11.0);
    assert_eq!(http_get(d.status, "/healthz"), (200, "ok\n".into()));
    let log = d.process.log_text();
    assert!(log.contains("identity locked") && log.contains("lock-spam"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_refused_spam_is_refused_again_but_not_counted_again() {
    let fake = FakeRspamd::start().await;
    let d = start(&config(&fake, "")).await;
    // One envelope: a customer's MTA retrying the same message.
    let same = || spam("shop@example.com").to(&["customer@example.net"]);
    assert!(Mta::send(d.process.addr, &spam("shop@example.com")).await.accepted());
    assert!(Mta::send(d.process.addr, &spam("shop@example.com")).await.accepted());
    let refused = Mta::send(d.process.addr, &same()).await;
    assert!(refused.tempfailed(), "{refused:?}");
    // Its retries are scanned, refused again while over the throttle, and
    // never counted: five of them do not reach the lock rule (3).
    for _ in 0..5 {
        let retry = Mta::send(d.process.addr, &same()).await;
        assert!(retry.tempfailed(), "{retry:?}");
        assert!(retry.refusal().unwrap().contains("spam-throttle"), "{retry:?}");
    }
    // A new spam message is a new attempt: the fourth locks.
    let new = Mta::send(d.process.addr, &spam("shop@example.com")).await;
    assert!(new.refusal().unwrap().starts_with("550 "), "{new:?}");
    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"spam\"}"), 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phishing_is_its_own_count_and_dry_runs_only_log() {
    let fake = FakeRspamd::start().await;
    let d = start(&config(
        &fake,
        "phishing_symbols = [\"PHISHING\"]\nvirus_symbols = [\"MIME_GOOD\"]",
    ))
    .await;
    let phish = || Msg::from_user("eve@example.com").body("Your bank: phish-test\r\n");
    // A symbol listed in virus_symbols (here MIME_GOOD, on every honest
    // message) feeds the virus rule, a dry run: logged, never enforced.
    assert!(Mta::send(d.process.addr, &phish()).await.accepted());
    let second = Mta::send(d.process.addr, &phish()).await;
    assert!(second.refusal().unwrap().starts_with("550 "), "{second:?}");
    assert!(second.refusal().unwrap().contains("phishing"), "{second:?}");
    for _ in 0..3 {
        assert!(Mta::send(d.process.addr, &ham("dave@example.com")).await.accepted());
    }
    assert!(locked(&d).is_empty());
    let log = d.process.log_text();
    assert!(
        log.contains("would lock [dry run, not done]") && log.contains("virus"),
        "{log}"
    );
    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"phishing\"}"), 2.0);
    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"virus\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_bound_is_scanned_on_its_first_bytes() {
    // Padding spam past max_message_size (4096 here) does not take it out
    // of the scanner's sight: the scanner gets the first 4096 bytes, where
    // the text and its URLs are.
    let fake = FakeRspamd::start().await;
    let d = start(&config(&fake, "")).await;
    let padded = format!("{GTUBE}{}\r\n", "x".repeat(50_000));
    for _ in 0..2 {
        let out = Mta::send(d.process.addr, &Msg::from_user("alice@example.com").body(&padded)).await;
        assert!(out.accepted(), "{out:?}");
    }
    let third = Mta::send(d.process.addr, &Msg::from_user("alice@example.com").body(&padded)).await;
    assert!(
        third
            .refusal()
            .is_some_and(|r| r.starts_with("451 ") && r.contains("spam-throttle")),
        "{third:?}"
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.body.len() == 4096),
        "{:?}",
        seen.iter().map(|s| s.body.len()).collect::<Vec<_>>()
    );
    assert_eq!(metric(d.status, "egress_milter_scans_truncated_total"), 3.0);
    assert_eq!(metric(d.status, "egress_milter_scans_total{verdict=\"spam\"}"), 3.0);
    assert!(
        d.process
            .log_text()
            .contains("over scanner.max_message_size: scanned on its first max_message_size bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_scanner_delays_mail_by_its_timeout_and_no_more() {
    let fake = FakeRspamd::start().await;
    fake.set(Mode::Silent);
    let d = start(&config(&fake, "")).await;
    for _ in 0..4 {
        let started = Instant::now();
        let out = Mta::send(d.process.addr, &spam("alice@example.com")).await;
        let took = started.elapsed();
        assert!(out.accepted(), "{out:?}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    assert_eq!(
        metric(d.status, "egress_milter_scanner_errors_total{cause=\"timeout\"}"),
        4.0
    );
    assert_eq!(metric(d.status, "egress_milter_scanner_degraded"), 1.0);
    let (status, body) = http_get(d.status, "/healthz");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("degraded: the content scanner") && body.contains("no verdict within 500 ms"),
        "{body}"
    );
    // Nothing was counted: the spam that passed unscanned locked no one.
    assert!(locked(&d).is_empty());
    // The warning is rate-limited: one line for the four failures.
    let log = d.process.log_text();
    assert_eq!(log.matches("content scanner failed").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_answering_500_or_garbage_is_degraded_until_it_recovers() {
    let fake = FakeRspamd::start().await;
    fake.set(Mode::Error);
    let d = start(&config(&fake, "")).await;
    assert!(Mta::send(d.process.addr, &spam("alice@example.com")).await.accepted());
    assert_eq!(
        metric(d.status, "egress_milter_scanner_errors_total{cause=\"status\"}"),
        1.0
    );
    let (_, body) = http_get(d.status, "/healthz");
    assert!(body.contains("answered HTTP 500"), "{body}");
    fake.set(Mode::Garbage);
    assert!(Mta::send(d.process.addr, &spam("alice@example.com")).await.accepted());
    assert_eq!(
        metric(d.status, "egress_milter_scanner_errors_total{cause=\"parse\"}"),
        1.0
    );
    let (_, body) = http_get(d.status, "/healthz");
    assert!(body.contains("answer is not rspamd's JSON"), "{body}");
    // A scanner that is not there at all.
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(Mta::send(d.process.addr, &spam("alice@example.com")).await.accepted());
    assert!(metric(d.status, "egress_milter_scanner_errors_total{cause=\"connect\"}") >= 1.0);
    let log = d.process.log_text();
    assert!(log.contains("content scanner failed (answered HTTP 500)"), "{log}");
    assert!(locked(&d).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_degraded_state_clears_with_the_next_verdict() {
    let fake = FakeRspamd::start().await;
    fake.set(Mode::Error);
    let d = start(&config(&fake, "")).await;
    assert!(Mta::send(d.process.addr, &ham("bob@example.com")).await.accepted());
    assert_eq!(metric(d.status, "egress_milter_scanner_degraded"), 1.0);
    fake.set(Mode::Verdicts);
    assert!(Mta::send(d.process.addr, &ham("bob@example.com")).await.accepted());
    assert_eq!(metric(d.status, "egress_milter_scanner_degraded"), 0.0);
    assert_eq!(http_get(d.status, "/healthz"), (200, "ok\n".into()));
}
