// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The content scanner's client: one message posted to rspamd's normal
//! worker (`POST /checkv2`, rspamd's own HTTP protocol) over plain
//! HTTP/1.1, one connection per message, and its JSON answer read into a
//! [`ScanReport`]. What a report means for the rules is the policy's
//! business ([`crate::policy::content`]); this module knows none of it.
//!
//! Everything is bounded: the whole exchange, connection included, by the
//! caller's timeout; the answer by [`MAX_RESPONSE_BYTES`].

use crate::config::ScannerUrl;
use crate::policy::content::ScanReport;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The largest answer read: rspamd's answer is a few KiB (one entry per
/// symbol that matched); a bigger one is an error, not a reason to grow.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What rspamd is told about the message besides its text (its protocol's
/// request headers).
#[derive(Clone, Debug, Default)]
pub struct Envelope<'a> {
    /// The envelope sender, as in MAIL FROM (with or without `<>`).
    pub from: &'a [u8],
    /// The accepted recipients, as in RCPT TO.
    pub rcpts: &'a [Vec<u8>],
    pub ip: Option<IpAddr>,
    /// The SASL login.
    pub user: Option<&'a [u8]>,
    pub queue_id: &'a str,
    pub helo: Option<&'a str>,
}

/// Why no verdict came back.
#[derive(Debug)]
pub enum ScanError {
    /// The scanner could not be reached.
    Connect(std::io::Error),
    /// No complete answer within the timeout.
    Timeout(Duration),
    /// The HTTP exchange failed (connection closed, malformed answer).
    Http(String),
    /// An answer other than 200.
    Status(u16),
    /// A 200 whose body is not rspamd's JSON.
    Parse(String),
}

impl ScanError {
    /// The `cause` label of `egress_milter_scanner_errors_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            ScanError::Connect(_) => "connect",
            ScanError::Timeout(_) => "timeout",
            ScanError::Http(_) => "http",
            ScanError::Status(_) => "status",
            ScanError::Parse(_) => "parse",
        }
    }
}

/// Every `cause` label, for the metrics.
pub const CAUSES: [&str; 5] = ["connect", "timeout", "http", "status", "parse"];

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Connect(e) => write!(f, "cannot connect: {e}"),
            ScanError::Timeout(d) => write!(f, "no verdict within {} ms (scanner.timeout)", d.as_millis()),
            ScanError::Http(e) => write!(f, "HTTP exchange failed: {e}"),
            ScanError::Status(s) => write!(f, "answered HTTP {s}"),
            ScanError::Parse(e) => write!(f, "answer is not rspamd's JSON: {e}"),
        }
    }
}

impl std::error::Error for ScanError {}

/// Asks the scanner at `url` for its report of `message` (headers and
/// body as received), waiting `timeout` at most for the whole exchange.
pub async fn scan(
    url: &ScannerUrl,
    timeout: Duration,
    envelope: &Envelope<'_>,
    message: Bytes,
) -> Result<ScanReport, ScanError> {
    match tokio::time::timeout(timeout, exchange(url, envelope, message)).await {
        Ok(result) => result,
        Err(_) => Err(ScanError::Timeout(timeout)),
    }
}

async fn exchange(url: &ScannerUrl, envelope: &Envelope<'_>, message: Bytes) -> Result<ScanReport, ScanError> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(ScanError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| ScanError::Http(e.to_string()))?;
    // The connection is driven beside the request, in this task: when the
    // exchange ends (or the caller's timeout drops it) so does it.
    let connection = async move {
        let _ = connection.await;
        std::future::pending::<()>().await
    };
    let request = request(url, envelope, message)?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ScanError::Http(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ScanError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(ScanError::Status(status.as_u16()));
        }
        parse_report(&body)
    };
    tokio::select! {
        result = answer => result,
        // Never taken (the connection future ends pending), but an answer
        // that never comes is an error, not a panic.
        () = connection => Err(ScanError::Http("the connection ended without an answer".into())),
    }
}

/// The request: the message as the body, the envelope in rspamd's headers.
fn request(url: &ScannerUrl, envelope: &Envelope<'_>, message: Bytes) -> Result<Request<Full<Bytes>>, ScanError> {
    let mut request = Request::post("/checkv2")
        .header(hyper::header::HOST, format!("{}:{}", url.host, url.port))
        .body(Full::new(message))
        .map_err(|e| ScanError::Http(e.to_string()))?;
    let headers = request.headers_mut();
    // A value that is no valid header value (a control character an
    // attacker put in an address) is left out; rspamd scans without it.
    let mut add = |name: &'static str, value: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    };
    add("from", trim_angles(envelope.from));
    for rcpt in envelope.rcpts {
        add("rcpt", trim_angles(rcpt));
    }
    if let Some(ip) = envelope.ip {
        add("ip", ip.to_string().as_bytes());
    }
    if let Some(user) = envelope.user {
        add("user", user);
    }
    if !envelope.queue_id.is_empty() && envelope.queue_id != "NONE" {
        add("queue-id", envelope.queue_id.as_bytes());
    }
    if let Some(helo) = envelope.helo {
        add("helo", helo.as_bytes());
    }
    Ok(request)
}

fn trim_angles(a: &[u8]) -> &[u8] {
    let a = a.trim_ascii();
    let a = a.strip_prefix(b"<").unwrap_or(a);
    a.strip_suffix(b">").unwrap_or(a)
}

/// rspamd's answer, the fields read of it.
#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    symbols: HashMap<String, serde_json::Value>,
}

/// Reads rspamd's JSON answer (`action`, `score`, `symbols`).
pub fn parse_report(body: &[u8]) -> Result<ScanReport, ScanError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| ScanError::Parse(e.to_string()))?;
    let mut symbols: Vec<String> = answer.symbols.into_keys().collect();
    symbols.sort();
    Ok(ScanReport {
        action: answer.action,
        score: answer.score,
        symbols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScannerConfig;
    use crate::policy::content::Content;

    /// An answer of rspamd 3.4 to GTUBE, as /checkv2 gives it.
    const GTUBE: &str = r#"{"is_skipped":false,"score":0.0,"required_score":15.0,"action":"reject","thresholds":{"reject":15.0,"add header":6.0,"greylist":4.0},"symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"x@y","time_real":0.001,"milter":{"remove_headers":{"X-Spam":0}}}"#;

    #[test]
    fn a_json_answer_becomes_a_report_and_a_verdict() {
        let report = parse_report(GTUBE.as_bytes()).unwrap();
        assert_eq!(report.action, "reject");
        assert_eq!(report.symbols, ["GTUBE"]);
        let config = ScannerConfig::default();
        assert_eq!(Content::classify(&report, &config).to_string(), "spam");
        let phish = r#"{"score":7.5,"action":"no action","symbols":{"PHISHING":{"score":7.5,"options":["bank.example->evil.example"]},"MIME_GOOD":{"score":-0.1}}}"#;
        let report = parse_report(phish.as_bytes()).unwrap();
        assert_eq!(report.symbols, ["MIME_GOOD", "PHISHING"]);
        let verdict = Content::classify(&report, &config);
        assert!(verdict.phishing && !verdict.spam);
        for bad in ["", "garbage", "{}", r#"{"action":3}"#, r#"{"error":"oops"}"#] {
            let e = parse_report(bad.as_bytes()).unwrap_err();
            assert_eq!(e.cause(), "parse", "{bad}: {e}");
        }
    }

    #[test]
    fn the_envelope_goes_in_rspamd_headers_and_bad_values_are_left_out() {
        let url: ScannerUrl = "http://127.0.0.1:11333".parse().unwrap();
        let rcpts = vec![b"<a@x.org>".to_vec(), b"<b@y.org>".to_vec(), b"<c\n@z.org>".to_vec()];
        let envelope = Envelope {
            from: b"<alice@example.com>",
            rcpts: &rcpts,
            ip: Some([192, 0, 2, 1].into()),
            user: Some(b"alice"),
            queue_id: "4ABC",
            helo: Some("pc.example"),
        };
        let r = request(&url, &envelope, Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n")).unwrap();
        assert_eq!(r.uri(), "/checkv2");
        let h = r.headers();
        assert_eq!(h["from"], "alice@example.com");
        let rcpt: Vec<_> = h.get_all("rcpt").iter().collect();
        assert_eq!(rcpt, ["a@x.org", "b@y.org"]);
        assert_eq!(h["ip"], "192.0.2.1");
        assert_eq!(h["user"], "alice");
        assert_eq!(h["queue-id"], "4ABC");
        assert_eq!(h["helo"], "pc.example");
        assert_eq!(h["host"], "127.0.0.1:11333");
        let none = Envelope {
            queue_id: "NONE",
            ..Envelope::default()
        };
        let r = request(&url, &none, Bytes::new()).unwrap();
        assert!(r.headers().get("queue-id").is_none() && r.headers().get("user").is_none());
    }
}
