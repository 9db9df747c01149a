// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The status API's answers on the wire, shared by the server
//! ([`super::status`]) and the CLI (`top`, `explain`, `report`, `queue`).

use crate::locks::file::{HistoryEvent, LockEntry};
use crate::ops::activity::{Activity, ReportRow};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The answer of `/api/identities`.
#[derive(Serialize, Deserialize)]
pub struct TopAnswer {
    /// Identities with an entry of their own, and the cap.
    pub tracked: usize,
    pub cap: usize,
    pub sort: String,
    pub identities: Vec<Activity>,
    /// Hosts whose activity is in the list: 1, or in a fleet every host
    /// that published in the last 30 seconds.
    #[serde(default = "one")]
    pub hosts: usize,
}

fn one() -> usize {
    1
}

/// The answer of `/api/report`.
#[derive(Serialize, Deserialize)]
pub struct ReportAnswer {
    pub hours: usize,
    pub rows: Vec<ReportRow>,
}

/// A lock as the API and `locks list --json` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    pub identity: String,
    /// `locked` or `expired`.
    pub state: String,
    pub source: String,
    pub locked_at: String,
    pub reason: String,
    pub rule: Option<String>,
    pub previous_locks: u32,
    pub expires_at: Option<String>,
    pub note: Option<String>,
    /// What admins did: who, when, why.
    #[serde(default)]
    pub history: Vec<HistoryEvent>,
}

impl LockView {
    pub fn new(e: &LockEntry, now: SystemTime) -> Self {
        Self {
            identity: e.identity.clone(),
            state: if e.is_active(now) { "locked" } else { "expired" }.to_string(),
            source: e.source.to_string(),
            locked_at: e.locked_at.to_string(),
            reason: e.reason.clone(),
            rule: e.rule.clone(),
            previous_locks: e.previous_locks,
            expires_at: e.expires_at.map(|t| t.to_string()),
            note: e.note.clone(),
            history: e.history.clone(),
        }
    }
}

/// The answer of `/api/locks`: one page of the locks a filter matches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocksAnswer {
    /// Entries in the list, and those the filter matches.
    pub total: usize,
    pub matched: usize,
    pub offset: usize,
    pub limit: usize,
    pub locks: Vec<LockView>,
}

/// The answer of `/api/session`: who is logged in and the CSRF token that
/// state-changing requests carry in `X-CSRF-Token`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionAnswer {
    pub user: String,
    pub csrf: Option<String>,
}

/// The body of `POST /api/actions/NAME` (`lock`, `unlock`, `extend`,
/// `reset`, `bulk-unlock`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// The identity, `@domain` or network (all but `bulk-unlock`).
    #[serde(default)]
    pub identity: Option<String>,
    /// Why: required, kept in the lock's history.
    pub reason: String,
    /// `lock`, `extend`: a duration from now such as `24h`; absent or
    /// `never`: no expiry.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// `bulk-unlock`: which locks.
    #[serde(default)]
    pub filter: Option<FilterRequest>,
    /// `bulk-unlock`: only list what would change.
    #[serde(default)]
    pub dry_run: bool,
    /// `bulk-unlock` without a filter: release every lock.
    #[serde(default)]
    pub all: bool,
}

/// A bulk operation's filter on the wire.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    /// Locked within this long (`1h`) or since this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// A glob over the identity, e.g. `*@example.com`.
    #[serde(default)]
    pub identity: Option<String>,
}

/// What an action did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionAnswer {
    pub message: String,
    pub dry_run: bool,
    /// The locks it changed (or, in a dry run, would change), as they were before.
    pub locks: Vec<LockView>,
}

/// One rule's state for one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub rule: String,
    pub counted: String,
    pub per: String,
    pub action: String,
    pub rate: String,
    /// Whether the rule applies (not exempt, a domain for per-domain rules).
    pub applies: bool,
    pub count: Option<u32>,
    pub limit: Option<u32>,
    pub window: String,
    pub window_secs: u64,
    pub reset_in: Option<String>,
    pub reset_in_secs: Option<u64>,
    /// A bounce rule with `min_ratio`: the share it acts at, and the
    /// recipients accepted in its window that the bounces are compared with.
    #[serde(default)]
    pub min_ratio: Option<String>,
    #[serde(default)]
    pub sent: Option<u32>,
}

/// The answer of `/api/identities/IDENTITY`: what `explain` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainAnswer {
    pub identity: String,
    pub domain: Option<String>,
    pub rules: Vec<RuleView>,
    pub lock: Option<LockView>,
    pub activity: Option<Activity>,
}

/// Decodes `%XX` escapes; `None` if malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes everything but unreserved characters and `@` as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server writes and the CLI reads with the same types: what one
    /// side writes, the other reads back unchanged.
    #[test]
    fn explain_answer_round_trips() {
        let answer = ExplainAnswer {
            identity: "alice@example.com".into(),
            domain: Some("example.com".into()),
            rules: vec![RuleView {
                rule: "per-minute".into(),
                counted: "messages".into(),
                per: "identity".into(),
                action: "tempfail".into(),
                rate: "5/1m".into(),
                applies: true,
                count: Some(3),
                limit: Some(5),
                window: "1m".into(),
                window_secs: 60,
                reset_in: Some("24s".into()),
                reset_in_secs: Some(24),
                min_ratio: None,
                sent: None,
            }],
            lock: None,
            activity: None,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<ExplainAnswer>(&text).unwrap(), answer);
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["alice@example.com", "a b+c/d%e@x", "2001:db8::/64", "ü@x"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
    }
}
