// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The abuse report of RFC 5965 (ARF) for a new automatic lock, mailed to
//! `notify.arf_to`: `multipart/report; report-type=feedback-report` with a
//! human-readable part, the `message/feedback-report` fields and the
//! headers of a sample message (`text/rfc822-headers`).

use super::mail::{ComposeError, Report, clean, deliver, facts, finish, headers, message_id, rfc5322_date, text_body};
use super::{LockEvent, Sample};
use crate::config::NotifyConfig;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, MultiPart, SinglePart};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::error;

/// `User-Agent:` of the feedback report (RFC 5965 section 3.1).
pub const USER_AGENT: &str = concat!("egress-milter/", env!("CARGO_PKG_VERSION"));

/// Sends the ARF report to `arf_to`, with retries; whether the relay took it.
pub(super) async fn send_arf(notify: NotifyConfig, event: Arc<LockEvent>, host: String) -> bool {
    let Some(from) = notify.arf_sender().map(|f| f.0.clone()) else {
        return false;
    };
    let to: Vec<String> = notify.arf_to.iter().map(|a| a.0.clone()).collect();
    match compose_arf(&event, &from, &to, &host, SystemTime::now()) {
        Ok(message) => deliver(&notify, "ARF report", &event.identity, &from, &to, &message, &host).await,
        Err(e) => {
            error!(identity = %event.identity, "ARF report not sent, giving up: {e}");
            false
        }
    }
}

/// The ARF report of a lock, with `event.sample` as the reported message.
pub fn compose_arf(
    event: &LockEvent,
    from: &str,
    to: &[String],
    host: &str,
    now: SystemTime,
) -> Result<Report, ComposeError> {
    let message_id = message_id(host, now);
    let identity = clean(&event.identity);
    let subject = format!("Abuse report: {identity} locked by egress-milter on {host}");
    let sample = event.sample.as_deref();
    let boundary = format!(
        "egress-milter-arf.{}",
        message_id.trim_matches(['<', '>']).replace('@', ".")
    );
    let content_type = format!("multipart/report; report-type=feedback-report; boundary=\"{boundary}\"");
    let content_type = ContentType::parse(&content_type)
        .map_err(|e| ComposeError(format!("cannot build the report's content type: {e}")))?;
    let report = MultiPart::builder()
        .header(content_type)
        .build()
        .singlepart(part("text/plain; charset=utf-8", human(event, host))?)
        .singlepart(part("message/feedback-report", feedback_fields(event, host))?)
        .singlepart(part("text/rfc822-headers", sample_headers(event, sample))?);
    let message = headers(from, to, &subject, &message_id, now)?.multipart(report);
    finish(message, message_id)
}

/// Part 1: what was locked, why, with what counts.
fn human(event: &LockEvent, host: &str) -> String {
    let identity = clean(&event.identity);
    let sample = match event.sample.as_deref() {
        Some(s) if !s.headers().is_empty() => match &s.queue_id {
            Some(q) => format!("The headers below are those of message {} of {identity}.", clean(q)),
            None => format!("The headers below are those of a message of {identity}."),
        },
        _ => format!("No message of {identity} reached its headers before the lock: none is attached."),
    };
    format!(
        "This is an abuse report in the Abuse Reporting Format (RFC 5965).\n\
         \n\
         {}\n\
         {sample}\n\
         \n\
         egress-milter refuses further mail from {identity} until the lock\n\
         is lifted.\n",
        facts(event, host)
    )
}

/// Part 2: the machine-readable fields of RFC 5965 section 3.1 and 3.2.
fn feedback_fields(event: &LockEvent, host: &str) -> String {
    let mut f = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(f, "{name}: {}", clean(value));
    };
    field("Feedback-Type", "abuse");
    field("User-Agent", USER_AGENT);
    field("Version", "1");
    let sample = event.sample.as_deref();
    if let Some(s) = sample {
        field("Original-Mail-From", &format!("<{}>", s.envelope_from));
        for rcpt in &s.recipients {
            field("Original-Rcpt-To", &format!("<{rcpt}>"));
        }
    }
    let arrival = sample.and_then(|s| s.arrival).unwrap_or(event.locked_at);
    field("Arrival-Date", &rfc5322_date(arrival.0));
    field("Reporting-MTA", &format!("dns; {host}"));
    if let Some(ip) = sample.and_then(|s| s.client_ip) {
        field("Source-IP", &ip.to_string());
    }
    if event.identity_source == "auth" {
        // The login the mail was sent with (RFC 8601, method "auth").
        field(
            "Authentication-Results",
            &format!("{host}; auth=pass smtp.auth={}", event.identity),
        );
    }
    field("Incidents", &event.count.max(1).to_string());
    if let Some(domain) = reported_domain(event, sample) {
        field("Reported-Domain", &domain);
    }
    f
}

/// The domain of the identity, or else of the envelope sender.
fn reported_domain(event: &LockEvent, sample: Option<&Sample>) -> Option<String> {
    let domain = |a: &str| {
        a.rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .filter(|d| !d.is_empty())
    };
    domain(&event.identity).or_else(|| sample.and_then(|s| domain(&s.envelope_from)))
}

/// Part 3: the sample's headers, as the MTA passed them to the milter.
fn sample_headers(event: &LockEvent, sample: Option<&Sample>) -> String {
    let mut text = String::new();
    match sample.filter(|s| !s.headers().is_empty()) {
        Some(s) => {
            for line in s.headers() {
                text.push_str(&line.replace("\r\n", "\n"));
                text.push('\n');
            }
        }
        None => {
            // The part is required; say why it has no header of the message.
            let _ = writeln!(
                text,
                "X-Egress-Milter-Note: no header of a message of {} was seen before the lock",
                clean(&event.identity)
            );
        }
    }
    text
}

/// A part of `content_type` whose text is kept as it is when it is ASCII
/// (7bit). Otherwise a text part is quoted-printable (7-bit clean for any
/// relay), and the feedback report, a `message/*` type that must not be
/// encoded, is 8bit (the relay must then offer 8BITMIME).
fn part(content_type: &str, text: String) -> Result<SinglePart, ComposeError> {
    let ct = ContentType::parse(content_type)
        .map_err(|e| ComposeError(format!("cannot build the content type {content_type}: {e}")))?;
    let body = if content_type.starts_with("message/") && !text.is_ascii() {
        Body::new_with_encoding(text, ContentTransferEncoding::EightBit)
            .unwrap_or_else(|raw| Body::new(String::from_utf8_lossy(&raw).into_owned()))
    } else {
        text_body(text)
    };
    Ok(SinglePart::builder().header(ct).body(body))
}
