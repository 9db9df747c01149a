// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The sample message of an ARF report: the envelope and the headers of one
//! message of the locked identity, bounded in size.
//!
//! A lock rule that counts messages trips at `MAIL FROM`, before the
//! message that trips it has a header (and that message is refused there,
//! so it never gets one). Its sample is then the identity's last accepted
//! message: [`SampleCache`] keeps that one message per identity for the
//! [`SAMPLE_IDENTITIES`] identities that sent last, and only while
//! `notify.arf_to` is set. A lock tripped after the headers (a header
//! identity, a recipient rule at a later `RCPT`, the end of the message)
//! has the tripping message itself as its sample.

use crate::locks::file::Timestamp;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Most headers kept of one message.
pub const MAX_SAMPLE_HEADERS: usize = 32;
/// Most bytes of headers kept of one message (names, values, line ends).
pub const MAX_SAMPLE_BYTES: usize = 8 * 1024;
/// Most envelope recipients kept of one message.
pub const MAX_SAMPLE_RECIPIENTS: usize = 8;
/// Identities whose last accepted message is kept: at most
/// `SAMPLE_IDENTITIES × MAX_SAMPLE_BYTES` (2 MiB) of headers. A hijacked
/// account sends fast, so its last message is among the most recent ones.
pub const SAMPLE_IDENTITIES: usize = 256;

/// One message as the milter saw it, for the ARF report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// The MTA's queue id, once known.
    pub queue_id: Option<String>,
    /// The envelope sender, without `<>` (empty for the null sender).
    pub envelope_from: String,
    /// The first [`MAX_SAMPLE_RECIPIENTS`] envelope recipients, without `<>`.
    pub recipients: Vec<String>,
    /// The client's address as the MTA reported it.
    pub client_ip: Option<IpAddr>,
    /// When the MTA received `MAIL FROM`.
    pub arrival: Option<Timestamp>,
    /// `Name: value` lines in order, folding kept (CRLF).
    headers: Vec<String>,
    bytes: usize,
    /// Headers were left out at the bounds.
    truncated: bool,
}

impl Sample {
    pub fn new(envelope_from: &[u8], client_ip: Option<IpAddr>, arrival: SystemTime) -> Self {
        Sample {
            envelope_from: strip_brackets(envelope_from),
            client_ip,
            arrival: Some(Timestamp(arrival)),
            ..Sample::default()
        }
    }

    /// Keeps one envelope recipient (the first few only).
    pub fn recipient(&mut self, rcpt: &[u8]) {
        if self.recipients.len() < MAX_SAMPLE_RECIPIENTS {
            self.recipients.push(strip_brackets(rcpt));
        }
    }

    /// Keeps one header, as the MTA passed it, within the bounds.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let name_ok = !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return;
        }
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(value);
        // Folded lines keep their folding, with CRLF; nothing else may end
        // a line, and a continuation line must start with white space.
        let mut line = format!("{name}:");
        let value = value.trim_start_matches([' ', '\t']);
        if !value.is_empty() && !value.starts_with(['\r', '\n']) {
            line.push(' ');
        }
        let mut pieces = value.split('\n').map(|p| p.strip_suffix('\r').unwrap_or(p));
        if let Some(first) = pieces.next() {
            line.push_str(&printable(first));
        }
        for piece in pieces {
            line.push_str("\r\n");
            if !piece.starts_with([' ', '\t']) {
                line.push(' ');
            }
            line.push_str(&printable(piece));
        }
        if self.headers.len() >= MAX_SAMPLE_HEADERS || self.bytes + line.len() + 2 > MAX_SAMPLE_BYTES {
            self.truncated = true;
            return;
        }
        self.bytes += line.len() + 2;
        self.headers.push(line);
    }

    /// The kept header lines, each without its final CRLF.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Whether headers were left out at [`MAX_SAMPLE_HEADERS`] or
    /// [`MAX_SAMPLE_BYTES`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

fn strip_brackets(addr: &[u8]) -> String {
    let addr = String::from_utf8_lossy(addr);
    let addr = addr.trim();
    let addr = addr.strip_prefix('<').unwrap_or(addr);
    printable(addr.strip_suffix('>').unwrap_or(addr))
}

/// Control characters but TAB replaced, so nothing can break a line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// The last accepted message of the identities that sent last, bounded by
/// [`SAMPLE_IDENTITIES`].
#[derive(Debug, Default)]
pub struct SampleCache {
    /// Oldest first. A linear search over a few hundred short keys, once
    /// per accepted message, costs less than keeping a second index.
    entries: Mutex<VecDeque<(String, Arc<Sample>)>>,
}

impl SampleCache {
    /// Keeps `sample` as the identity's last message.
    pub fn remember(&self, identity: &str, sample: Sample) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = entries.iter().position(|(id, _)| id == identity) {
            entries.remove(i);
        }
        while entries.len() >= SAMPLE_IDENTITIES {
            entries.pop_front();
        }
        entries.push_back((identity.to_string(), Arc::new(sample)));
    }

    /// The identity's last message, if it is still kept.
    pub fn recall(&self, identity: &str) -> Option<Arc<Sample>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .rev()
            .find(|(id, _)| id == identity)
            .map(|(_, s)| s.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_kept_within_the_bounds_and_cannot_break_lines() {
        let mut s = Sample::new(b"<a@example.com>", None, SystemTime::UNIX_EPOCH);
        assert_eq!(s.envelope_from, "a@example.com");
        s.header(b"Subject", b"one\n\ttwo");
        s.header(b"X-Evil", b"x\r\nBcc: victim@example.net");
        s.header(b"Bad Name", b"x");
        s.header(b"Empty", b"");
        assert_eq!(
            s.headers(),
            [
                "Subject: one\r\n\ttwo",
                "X-Evil: x\r\n Bcc: victim@example.net",
                "Empty:"
            ]
        );
        for i in 0..100 {
            s.header(format!("X-{i}").as_bytes(), b"v");
        }
        assert_eq!(s.headers().len(), MAX_SAMPLE_HEADERS);
        assert!(s.truncated());
        let mut big = Sample::default();
        for _ in 0..10 {
            big.header(b"X-Big", &[b'a'; 2000]);
        }
        assert!(big.headers().iter().map(|h| h.len() + 2).sum::<usize>() <= MAX_SAMPLE_BYTES);
        assert_eq!(big.headers().len(), 4);
        for i in 0..20 {
            big.recipient(format!("<r{i}@example.net>").as_bytes());
        }
        assert_eq!(big.recipients.len(), MAX_SAMPLE_RECIPIENTS);
        assert_eq!(big.recipients[0], "r0@example.net");
    }

    #[test]
    fn the_cache_keeps_the_last_message_of_the_last_identities() {
        let cache = SampleCache::default();
        let sample = |q: &str| Sample {
            queue_id: Some(q.into()),
            ..Sample::default()
        };
        cache.remember("alice", sample("A1"));
        cache.remember("alice", sample("A2"));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.recall("alice").unwrap().queue_id.as_deref(), Some("A2"));
        for i in 0..SAMPLE_IDENTITIES {
            cache.remember(&format!("u{i}"), sample("U"));
        }
        assert_eq!(cache.len(), SAMPLE_IDENTITIES);
        assert!(cache.recall("alice").is_none(), "the oldest went first");
        assert!(cache.recall("u0").is_some());
    }
}
