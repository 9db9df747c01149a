// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! What a delivery status notification reports: the `message/delivery-status`
//! part of a `multipart/report` (RFC 3464), as Postfix's bounce daemon
//! writes it. Only what charging a bounce needs is read: the queue id of
//! the message that failed (Postfix's `X-Postfix-Queue-ID` per-message
//! field) and how many of its recipients failed (`Action: failed`).
//! Delay notices (`Action: delayed`) and success reports fail nobody.

use mail_parser::MimeHeaders;

/// Most bytes of a message read to find its report: a Postfix bounce puts
/// the report before the returned message, and is much smaller.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What one bounce reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceReport {
    /// The queue id of the message that bounced.
    pub queue_id: String,
    /// Its recipients reported as failed.
    pub failed: u32,
}

/// Reads the report of a whole message (headers and body as received, cut
/// at [`MAX_REPORT_BYTES`]). `None` if it is no delivery status report,
/// names no queue id, or reports no failure.
pub fn parse(message: &[u8]) -> Option<BounceReport> {
    let parsed = mail_parser::MessageParser::new().parse(message)?;
    let report = parsed.parts.iter().find(|part| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
        })
    })?;
    let body = message.get(report.offset_body as usize..report.offset_end as usize)?;
    parse_status_fields(body)
}

/// Reads the fields of a `message/delivery-status` body: one block of
/// per-message fields, then one block per recipient, blocks separated by
/// empty lines.
fn parse_status_fields(body: &[u8]) -> Option<BounceReport> {
    let text = String::from_utf8_lossy(body);
    let mut queue_id = None;
    let mut failed = 0u32;
    let mut first_block = true;
    let mut in_block = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if in_block {
                first_block = false;
            }
            in_block = false;
            continue;
        }
        in_block = true;
        // Folded continuation lines carry no field of interest here.
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if first_block {
            if name.eq_ignore_ascii_case("X-Postfix-Queue-ID") && queue_id.is_none() && is_queue_id(value) {
                queue_id = Some(value.to_string());
            }
        } else if name.eq_ignore_ascii_case("Action") && value.eq_ignore_ascii_case("failed") {
            failed = failed.saturating_add(1);
        }
    }
    let queue_id = queue_id?;
    (failed > 0).then_some(BounceReport { queue_id, failed })
}

/// A Postfix queue id: short (10–12 hex digits) or long (up to 20
/// letters and digits).
fn is_queue_id(value: &str) -> bool {
    (6..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bounce as Postfix 3.7's bounce daemon writes it (Debian 12).
    pub const POSTFIX_BOUNCE: &str = "Received: by mta.example.net (Postfix)\r
\tid 4XyZ1b2c3dz9sBq; Mon,  1 Dec 2026 10:00:00 +0000 (UTC)\r
Date: Mon,  1 Dec 2026 10:00:00 +0000 (UTC)\r
From: MAILER-DAEMON@mta.example.net (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: alice@example.com\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"4XyZ1b2c3dz9sBq.1764583200/mta.example.net\"\r
Message-Id: <20261201100000.4XyZ1b2c3dz9sBq@mta.example.net>\r
\r
This is a MIME-encapsulated message.\r
\r
--4XyZ1b2c3dz9sBq.1764583200/mta.example.net\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients.\r
\r
--4XyZ1b2c3dz9sBq.1764583200/mta.example.net\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mta.example.net\r
X-Postfix-Queue-ID: 4XyA0a1b2cz9sBp\r
X-Postfix-Sender: rfc822; alice@example.com\r
Arrival-Date: Mon,  1 Dec 2026 09:59:59 +0000 (UTC)\r
\r
Final-Recipient: rfc822; unknown1@remote.example\r
Original-Recipient: rfc822;unknown1@remote.example\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mx.remote.example\r
Diagnostic-Code: smtp; 550 5.1.1 <unknown1@remote.example>: Recipient address\r
    rejected: User unknown\r
\r
Final-Recipient: rfc822; unknown2@remote.example\r
Action: failed\r
Status: 5.1.1\r
\r
Final-Recipient: rfc822; slow@remote.example\r
Action: delayed\r
Status: 4.4.1\r
\r
--4XyZ1b2c3dz9sBq.1764583200/mta.example.net\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Action: failed\r
X-Postfix-Queue-ID: FORGEDFORGED\r
From: alice@example.com\r
\r
--4XyZ1b2c3dz9sBq.1764583200/mta.example.net--\r
";

    #[test]
    fn reads_the_queue_id_and_counts_failed_recipients() {
        assert_eq!(
            parse(POSTFIX_BOUNCE.as_bytes()),
            Some(BounceReport {
                queue_id: "4XyA0a1b2cz9sBp".into(),
                failed: 2
            })
        );
    }

    #[test]
    fn a_delay_notice_or_a_plain_message_reports_nothing() {
        let delayed = POSTFIX_BOUNCE.replace("Action: failed\r\nStatus: 5", "Action: delayed\r\nStatus: 4");
        assert_eq!(parse(delayed.as_bytes()), None);
        assert_eq!(
            parse(b"Subject: hi\r\n\r\nAction: failed\r\nX-Postfix-Queue-ID: 4XyA0a1b2cz9sBp\r\n"),
            None
        );
    }

    #[test]
    fn fields_outside_the_report_part_are_ignored() {
        // Only the returned headers name a queue id: not a report of ours.
        let text = POSTFIX_BOUNCE.replace("X-Postfix-Queue-ID: 4XyA0a1b2cz9sBp\r\n", "");
        assert_eq!(parse(text.as_bytes()), None);
    }

    #[test]
    fn a_cut_or_hostile_report_is_read_as_far_as_it_goes() {
        let cut = &POSTFIX_BOUNCE.as_bytes()[..POSTFIX_BOUNCE.find("unknown2").unwrap()];
        assert_eq!(parse(cut).map(|r| r.failed), Some(1));
        let bad_id = POSTFIX_BOUNCE.replace("4XyA0a1b2cz9sBp", "x; DROP");
        assert_eq!(parse(bad_id.as_bytes()), None);
        let garbage: Vec<u8> = (0..MAX_REPORT_BYTES).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(parse(&garbage), None);
    }
}
