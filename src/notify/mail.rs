// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock report mailed to the postmaster: composed with lettre's
//! message builder, handed to the relay by [`super::smtp`], retried with
//! backoff. [`deliver`] is shared with the ARF report ([`super::arf`]).

use super::{LockEvent, smtp};
use crate::config::{NotifyConfig, format_duration};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, Message, MessageBuilder, SinglePart};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info, warn};

/// Attempts to hand a report to the relay, and the pause before the
/// second one (multiplied by four for each further one).
const MAIL_ATTEMPTS: u32 = 3;
const MAIL_FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Sends the lock report to `mail_to`, with retries; whether the relay took it.
pub(super) async fn send_report(notify: NotifyConfig, event: Arc<LockEvent>, host: String) -> bool {
    let Some(from) = notify.mail_from.as_ref().map(|f| f.0.clone()) else {
        return false;
    };
    let to: Vec<String> = notify.mail_to.iter().map(|a| a.0.clone()).collect();
    match compose_report(&event, &from, &to, &host, SystemTime::now()) {
        Ok(message) => deliver(&notify, "lock report", &event.identity, &from, &to, &message, &host).await,
        Err(e) => {
            error!(identity = %event.identity, "lock report not sent, giving up: {e}");
            false
        }
    }
}

/// Hands `message` to the relay for `to`, with retries; whether the relay
/// took it. `what` names the report in the log lines.
pub(super) async fn deliver(
    notify: &NotifyConfig,
    what: &'static str,
    identity: &str,
    from: &str,
    to: &[String],
    message: &Report,
    host: &str,
) -> bool {
    let mut backoff = MAIL_FIRST_BACKOFF;
    for attempt in 1..=MAIL_ATTEMPTS {
        let result = smtp::send(
            &notify.smtp_relay,
            notify.smtp_timeout.0,
            host,
            from,
            to,
            message.text.as_bytes(),
        )
        .await;
        match result {
            Ok(refused) => {
                for (rcpt, reply) in &refused {
                    warn!(identity = %identity, recipient = %rcpt, reply = %reply, "{what}: recipient refused by the relay");
                }
                info!(
                    identity = %identity,
                    relay = %notify.smtp_relay,
                    message_id = %message.message_id,
                    recipients = to.len() - refused.len(),
                    "{what} sent"
                );
                return true;
            }
            Err(e) if e.is_permanent() || attempt == MAIL_ATTEMPTS => {
                error!(
                    identity = %identity,
                    relay = %notify.smtp_relay,
                    attempt,
                    "{what} not sent, giving up: {e}"
                );
                return false;
            }
            Err(e) => {
                warn!(
                    identity = %identity,
                    relay = %notify.smtp_relay,
                    attempt,
                    retry_in = %format_duration(backoff),
                    "{what} not sent, will retry: {e}"
                );
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
        }
    }
    false
}

/// A report ready to send.
#[derive(Clone, Debug)]
pub struct Report {
    pub message_id: String,
    /// Headers and body, lines ending in CRLF, 7-bit clean.
    pub text: String,
}

/// Why a report could not be composed (an address lettre refuses).
#[derive(Debug)]
pub struct ComposeError(pub String);

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ComposeError {}

/// A fresh `Message-ID`, unique to this process and moment.
pub(super) fn message_id(host: &str, now: SystemTime) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "<egress-milter.{}.{:09}.{}.{}@{}>",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        host
    )
}

fn mailbox(name: Option<&str>, address: &str) -> Result<Mailbox, ComposeError> {
    let address = address.parse().map_err(|e| {
        ComposeError(format!(
            "the address \"{address}\" cannot be used in a mail header: {e}"
        ))
    })?;
    Ok(Mailbox::new(name.map(str::to_string), address))
}

/// The headers every report has: Date, From, To, Subject, Message-ID and
/// `Auto-Submitted: auto-generated` (no vacation replies, RFC 3834).
pub(super) fn headers(
    from: &str,
    to: &[String],
    subject: &str,
    message_id: &str,
    now: SystemTime,
) -> Result<MessageBuilder, ComposeError> {
    let mut builder = Message::builder().date(now).from(mailbox(Some("egress-milter"), from)?);
    for rcpt in to {
        builder = builder.to(mailbox(None, rcpt)?);
    }
    Ok(builder
        .subject(clean(subject))
        .message_id(Some(message_id.to_string()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        )))
}

/// The formatted message, as text (lettre encodes every part 7-bit clean).
pub(super) fn finish(
    message: Result<Message, lettre::error::Error>,
    message_id: String,
) -> Result<Report, ComposeError> {
    let message = message.map_err(|e| ComposeError(format!("cannot build the message: {e}")))?;
    let text = String::from_utf8(message.formatted())
        .map_err(|_| ComposeError("the message is not text (a bug: please report it)".into()))?;
    Ok(Report { message_id, text })
}

/// The lock report: headers and a plain-text body for the postmaster.
pub fn compose_report(
    event: &LockEvent,
    from: &str,
    to: &[String],
    host: &str,
    now: SystemTime,
) -> Result<Report, ComposeError> {
    let message_id = message_id(host, now);
    let identity = clean(&event.identity);
    let subject = format!("egress-milter locked {identity}: rule {}", clean(&event.rule));
    let body = format!(
        "{}\n\
         While the lock holds, mail from {identity} is refused (or held, with\n\
         locked_action = \"hold\"), except to the support addresses of\n\
         locks.allow_recipients.\n\
         \n\
         Find out whether the account was taken over (look up the queue ids in\n\
         the mail log, reset its password), then review and remove the lock:\n\
         \n\
         \x20   egress-milter locks show {identity}\n\
         \x20   egress-milter locks remove {identity}\n\
         \n\
         This report was generated automatically; do not reply to it.\n",
        facts(event, host)
    );
    let part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(text_body(body));
    let message = headers(from, to, &subject, &message_id, now)?.singlepart(part);
    finish(message, message_id)
}

/// Text as it is (7bit) when it is ASCII with lines of legal length, else
/// quoted-printable: a report is 7-bit clean for any relay.
/// (lettre would quoted-print any line over 76 characters, and the long
/// `Reason:` line is one that people search the mail for.)
pub(super) fn text_body(text: String) -> Body {
    let seven_bit = text.is_ascii() && !text.contains(['\0', '\r']) && text.lines().all(|l| l.len() <= 998);
    if seven_bit {
        let crlf = text.lines().map(|l| format!("{l}\r\n")).collect::<String>();
        Body::dangerous_pre_encoded(crlf.into_bytes(), ContentTransferEncoding::SevenBit)
    } else {
        Body::new(text)
    }
}

/// What was locked, by which rule, when, with what evidence: the lines the
/// lock report and the ARF report's human-readable part share.
pub(super) fn facts(event: &LockEvent, host: &str) -> String {
    let identity = clean(&event.identity);
    let expires = match event.expires_at {
        Some(t) => format!("{t} (the lock lifts itself then)"),
        None => "never: the lock stays until an administrator removes it".into(),
    };
    let queue_ids = if event.queue_ids.is_empty() {
        "(none known)".to_string()
    } else {
        clean(&event.queue_ids.join(" "))
    };
    format!(
        "egress-milter on {host} locked {identity} automatically.\n\
         \n\
         Identity:   {identity} (from {source})\n\
         Rule:       {rule}: {count}/{limit} {counted} per {scope} in {window}\n\
         Reason:     {reason}\n\
         Locked at:  {locked_at}\n\
         Expires:    {expires}\n\
         Queue ids:  {queue_ids}\n\
         Host:       {host}\n",
        source = clean(&event.identity_source),
        rule = clean(&event.rule),
        count = event.count,
        limit = event.limit,
        counted = event.counted,
        scope = event.scope,
        window = format_duration(event.window),
        reason = clean(&event.reason),
        locked_at = event.locked_at,
    )
}

/// Control characters (CR, LF…) replaced, so no value can break a line.
pub(super) fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `Mon, 23 Nov 2026 14:07:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
        day,
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
