// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock report mailed to the postmaster: composed here, handed to the
//! relay by [`super::smtp`], retried with backoff.

use super::{LockEvent, smtp};
use crate::config::{NotifyConfig, format_duration};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info, warn};

/// Attempts to hand a report to the relay, and the pause before the
/// second one (multiplied by four for each further one).
const MAIL_ATTEMPTS: u32 = 3;
const MAIL_FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Sends the report, with retries; whether the relay took it.
pub(super) async fn send_report(notify: NotifyConfig, event: Arc<LockEvent>, host: String) -> bool {
    let Some(from) = notify.mail_from.as_ref().map(|f| f.0.clone()) else {
        return false;
    };
    let to: Vec<String> = notify.mail_to.iter().map(|a| a.0.clone()).collect();
    let message = compose_report(&event, &from, &to, &host, SystemTime::now());
    let mut backoff = MAIL_FIRST_BACKOFF;
    for attempt in 1..=MAIL_ATTEMPTS {
        let result = smtp::send(
            &notify.smtp_relay,
            notify.smtp_timeout.0,
            &host,
            &from,
            &to,
            &message.text,
        )
        .await;
        match result {
            Ok(refused) => {
                for (rcpt, reply) in &refused {
                    warn!(identity = %event.identity, recipient = %rcpt, reply = %reply, "lock report: recipient refused by the relay");
                }
                info!(
                    identity = %event.identity,
                    relay = %notify.smtp_relay,
                    message_id = %message.message_id,
                    recipients = to.len() - refused.len(),
                    "lock report sent"
                );
                return true;
            }
            Err(e) if e.is_permanent() || attempt == MAIL_ATTEMPTS => {
                error!(
                    identity = %event.identity,
                    relay = %notify.smtp_relay,
                    attempt,
                    "lock report not sent, giving up: {e}"
                );
                return false;
            }
            Err(e) => {
                warn!(
                    identity = %event.identity,
                    relay = %notify.smtp_relay,
                    attempt,
                    retry_in = %format_duration(backoff),
                    "lock report not sent, will retry: {e}"
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
    /// Headers and body, lines ending in CRLF.
    pub text: String,
}

/// The lock report: headers and a plain-text body for the postmaster.
pub fn compose_report(event: &LockEvent, from: &str, to: &[String], host: &str, now: SystemTime) -> Report {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let message_id = format!(
        "<egress-milter.{}.{:09}.{}.{}@{}>",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        host
    );
    let identity = clean(&event.identity);
    let subject = format!("egress-milter locked {identity}: rule {}", clean(&event.rule));
    let mut text = String::new();
    let mut header = |name: &str, value: &str| {
        let _ = write!(text, "{name}: {value}\r\n");
    };
    header("Date", &rfc5322_date(now));
    header("From", &format!("egress-milter <{from}>"));
    header("To", &to.join(", "));
    header("Subject", &encode_header(&subject));
    header("Message-ID", &message_id);
    header("Auto-Submitted", "auto-generated");
    header("MIME-Version", "1.0");
    header("Content-Type", "text/plain; charset=utf-8");
    header("Content-Transfer-Encoding", "8bit");
    text.push_str("\r\n");

    let expires = match event.expires_at {
        Some(t) => format!("{t} (the lock lifts itself then)"),
        None => "never: the lock stays until an administrator removes it".into(),
    };
    let queue_ids = if event.queue_ids.is_empty() {
        "(none known)".to_string()
    } else {
        event.queue_ids.join(" ")
    };
    let body = format!(
        "egress-milter on {host} locked {identity} automatically.\n\
         \n\
         Identity:   {identity} (from {source})\n\
         Rule:       {rule}: {count}/{limit} {counted} per {scope} in {window}\n\
         Reason:     {reason}\n\
         Locked at:  {locked_at}\n\
         Expires:    {expires}\n\
         Queue ids:  {queue_ids}\n\
         Host:       {host}\n\
         \n\
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
        source = clean(&event.identity_source),
        rule = clean(&event.rule),
        count = event.count,
        limit = event.limit,
        counted = event.counted,
        scope = event.scope,
        window = format_duration(event.window),
        reason = clean(&event.reason),
        locked_at = event.locked_at,
    );
    for line in body.lines() {
        text.push_str(line);
        text.push_str("\r\n");
    }
    Report { message_id, text }
}

/// Control characters (CR, LF…) replaced, so no value can break a line.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A header value, RFC 2047 Q-encoded (in chunks) if it is not plain ASCII.
fn encode_header(value: &str) -> String {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return value.to_string();
    }
    let mut words = Vec::new();
    let mut word = String::new();
    for c in value.chars() {
        let mut piece = String::new();
        if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            piece.push(c);
        } else if c == ' ' {
            piece.push('_');
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(piece, "={b:02X}");
            }
        }
        if word.len() + piece.len() > 60 {
            words.push(format!("=?utf-8?q?{word}?="));
            word.clear();
        }
        word.push_str(&piece);
    }
    words.push(format!("=?utf-8?q?{word}?="));
    words.join("\r\n ")
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
