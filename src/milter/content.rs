// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The content verdict of one message, for the session: the message text
//! kept (bounded) while content rules apply, and the scanner asked at its
//! end, with the scanner's failures reported (metrics, /healthz, a
//! rate-limited warning). What the verdict counts is the policy's
//! ([`crate::policy::content`], [`crate::policy::Policy::check_content`]).

use super::throttle::Throttle;
use crate::config::ScannerConfig;
use crate::ops::metrics::ScannerStats;
use crate::policy::content::Content;
use crate::policy::identity::Identity;
use crate::scan;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// One "content scanner failed" line every 10 seconds at most: with the
/// scanner down every message would log one.
static SCANNER_LOG: Throttle = Throttle::new(Duration::from_secs(10));

/// The message as received, for the content scanner, while content rules
/// apply to it: its headers and body up to `scanner.max_message_size`, and
/// its accepted recipients.
#[derive(Default)]
pub struct ContentText {
    pub text: Vec<u8>,
    pub rcpts: Vec<Vec<u8>>,
    /// It grew past the limit: `text` holds its first `limit` bytes, the
    /// rest is not read, and the scanner gets what was kept.
    pub over: bool,
}

impl ContentText {
    /// Keeps an accepted recipient for the scanner's `Rcpt` headers, at most
    /// `max` of them.
    pub fn recipient(&mut self, rcpt: &[u8], max: usize) {
        if self.rcpts.len() < max {
            self.rcpts.push(rcpt.to_vec());
        }
    }

    /// Appends `parts`, keeping at most `limit` bytes in all; returns whether
    /// more is wanted. A message cut at the limit is still scanned on what
    /// was kept: padding spam past the limit must not take it out of the
    /// scanner's sight (the text, URLs and the start of attachments come
    /// first).
    pub fn append(&mut self, parts: &[&[u8]], limit: u64) -> bool {
        if self.over {
            return false;
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for part in parts {
            let room = limit.saturating_sub(self.text.len());
            if part.len() > room {
                self.text.extend_from_slice(&part[..room]);
                self.over = true;
                return false;
            }
            self.text.extend_from_slice(part);
        }
        true
    }
}

/// Who asks the scanner about one message.
pub struct Asked<'a> {
    pub scanner: &'a ScannerConfig,
    pub stats: &'a ScannerStats,
    pub identity: &'a Identity,
    /// A client's retry of a message refused with 4xx (logged).
    pub retry: bool,
}

impl Asked<'_> {
    /// The verdict on `text` (the message as received; `over`: it grew
    /// past `max_message_size` and `text` is its first `max_message_size`
    /// bytes), or `None` when the scanner failed. Reports either way.
    pub async fn verdict(&self, envelope: &scan::Envelope<'_>, text: Vec<u8>, over: bool) -> Option<Content> {
        let queue_id = envelope.queue_id;
        let url = self.scanner.url.as_ref()?;
        if over {
            self.stats.truncated();
            info!(
                queue_id,
                identity = %self.identity,
                limit = self.scanner.max_message_size,
                "over scanner.max_message_size: scanned on its first max_message_size bytes"
            );
        }
        let started = Instant::now();
        let result = scan::scan(url, self.scanner.timeout.0, envelope, text.into()).await;
        let waited = started.elapsed();
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                self.stats.failed(e.cause(), waited, e.to_string());
                if let Some(events) = SCANNER_LOG.note() {
                    warn!(
                        queue_id,
                        scanner = %url,
                        cause = e.cause(),
                        left_out = events - 1,
                        "content scanner failed ({e}): the message passes unscanned, the spam, phishing and virus rules count nothing until it answers"
                    );
                }
                return None;
            }
        };
        let content = Content::classify(&report, self.scanner);
        self.stats.scanned(&content.to_string(), waited);
        let waited_ms = waited.as_millis();
        if content.is_clean() {
            debug!(queue_id, identity = %self.identity, action = ?report.action, score = report.score, waited_ms, "scanned: ham");
        } else {
            info!(
                queue_id,
                identity = %self.identity,
                verdict = %content,
                spam = content.spam,
                phishing = content.phishing,
                virus = content.virus,
                action = ?report.action,
                score = report.score,
                retry = self.retry,
                waited_ms,
                "scanned"
            );
        }
        Some(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_kept_up_to_the_bound_and_cut_there() {
        let mut t = ContentText::default();
        assert!(t.append(&[b"Subject: x", b"\r\n"], 20));
        assert!(t.append(&[b"\r\n"], 20));
        assert_eq!(t.text, b"Subject: x\r\n\r\n");
        assert!(!t.append(&[b"0123456789"], 20), "over the bound");
        assert!(t.over);
        assert_eq!(t.text, b"Subject: x\r\n\r\n012345");
        assert!(!t.append(&[b"x"], 20), "nothing more once over");
        assert_eq!(t.text.len(), 20);
    }
}
