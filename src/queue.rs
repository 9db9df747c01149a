// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `queue hold|release IDENTITY`: put an identity's mail that is already in
//! Postfix's queue on hold (or release it), with Postfix's own tools.
//!
//! Messages are found with `postqueue -j` (one JSON object per message):
//! those whose envelope sender is the identity (case-insensitive), and those
//! whose queue id the daemon recorded for the identity (the status listener's
//! evidence, which also catches mail sent by a SASL login under another
//! envelope sender). Their ids are fed to `postsuper -h -` (or `-H -`) on
//! standard input. Run as root or as the Postfix admin.

use crate::admin::Failure;
use crate::config::Config;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One message of `postqueue -j`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct QueuedMessage {
    pub queue_name: String,
    pub queue_id: String,
    #[serde(default)]
    pub sender: String,
}

/// Hold (`postsuper -h`) or release (`postsuper -H`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueAction {
    Hold,
    Release,
}

impl QueueAction {
    fn flag(self) -> &'static str {
        match self {
            QueueAction::Hold => "-h",
            QueueAction::Release => "-H",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            QueueAction::Hold => "held",
            QueueAction::Release => "released",
        }
    }

    /// Whether a message in `queue` is one this action applies to.
    fn applies_to(self, queue: &str) -> bool {
        match self {
            QueueAction::Hold => matches!(queue, "active" | "deferred" | "incoming" | "maildrop"),
            QueueAction::Release => queue == "hold",
        }
    }
}

/// Parses `postqueue -j` output; lines that are not messages are errors.
pub fn parse_postqueue(out: &str) -> Result<Vec<QueuedMessage>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("postqueue -j line {}: {e}", i + 1)))
        .collect()
}

/// The messages of `identity`: by sender or by recorded queue id.
pub fn select<'a>(
    queue: &'a [QueuedMessage],
    identity: &str,
    evidence: &HashSet<String>,
    action: QueueAction,
) -> Vec<&'a QueuedMessage> {
    let identity = identity.trim().trim_start_matches('<').trim_end_matches('>');
    queue
        .iter()
        .filter(|m| action.applies_to(&m.queue_name))
        .filter(|m| m.sender.eq_ignore_ascii_case(identity) || evidence.contains(&m.queue_id))
        .collect()
}

fn tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() { sbin } else { PathBuf::from(name) }
}

fn postfix_command(name: &str, postfix_config: Option<&Path>) -> Command {
    let mut c = Command::new(tool(name));
    if let Some(dir) = postfix_config {
        c.arg("-c").arg(dir);
    }
    c
}

/// Queue ids the daemon recorded for `identity`, if its status listener
/// answers; otherwise why not (matching then goes by sender only).
fn evidence(config: &Config, identity: &str) -> Result<HashSet<String>, String> {
    let path = format!("/api/identities/{}", crate::status::percent_encode(identity.trim()));
    let body = crate::status_client::get(config, &path).map_err(|f| f.message)?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(v["activity"]["queue_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q.as_str().map(str::to_string))
        .collect())
}

/// `queue hold|release IDENTITY [--dry-run] [--postfix-config DIR]`.
pub fn run(
    config: &Config,
    identity: &str,
    action: QueueAction,
    dry_run: bool,
    postfix_config: Option<&Path>,
) -> Result<String, Failure> {
    let mut out = String::new();
    let evidence = match evidence(config, identity) {
        Ok(ids) => ids,
        Err(why) => {
            let _ = writeln!(
                out,
                "note: no queue ids from the daemon ({why}); matching by envelope sender only"
            );
            HashSet::new()
        }
    };
    let listed = postfix_command("postqueue", postfix_config)
        .arg("-j")
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Failure::new(format!("cannot run postqueue: {e}")))?;
    if !listed.status.success() {
        return Err(Failure::new(format!(
            "postqueue -j failed ({}): {}",
            listed.status,
            String::from_utf8_lossy(&listed.stderr).trim()
        )));
    }
    let queue = parse_postqueue(&String::from_utf8_lossy(&listed.stdout)).map_err(Failure::new)?;
    let chosen = select(&queue, identity, &evidence, action);
    let ids: Vec<&str> = chosen.iter().map(|m| m.queue_id.as_str()).collect();
    if ids.is_empty() {
        let _ = writeln!(
            out,
            "no queued message of {} to {} ({} in the queue)",
            identity.trim(),
            if action == QueueAction::Hold { "hold" } else { "release" },
            queue.len()
        );
        return Ok(out);
    }
    if dry_run {
        let _ = writeln!(
            out,
            "would have {} {} message(s) of {}: {}",
            action.verb(),
            ids.len(),
            identity.trim(),
            ids.join(" ")
        );
        return Ok(out);
    }
    let mut child = postfix_command("postsuper", postfix_config)
        .arg(action.flag())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::new(format!("cannot run postsuper: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let list: String = ids.iter().map(|id| format!("{id}\n")).collect();
        stdin
            .write_all(list.as_bytes())
            .map_err(|e| Failure::new(format!("cannot give queue ids to postsuper: {e}")))?;
    }
    let done = child
        .wait_with_output()
        .map_err(|e| Failure::new(format!("postsuper failed: {e}")))?;
    if !done.status.success() {
        return Err(Failure::new(format!(
            "postsuper {} - failed ({}): {}",
            action.flag(),
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    let _ = writeln!(
        out,
        "{} {} message(s) of {}: {}",
        action.verb(),
        ids.len(),
        identity.trim(),
        ids.join(" ")
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = r#"{"queue_name": "deferred", "queue_id": "4A1", "arrival_time": 1, "message_size": 300, "forced_expire": false, "sender": "Alice@Example.com", "recipients": [{"address": "x@remote.test", "delay_reason": "connection refused"}]}
{"queue_name": "active", "queue_id": "4A2", "arrival_time": 1, "message_size": 300, "forced_expire": false, "sender": "other@example.com", "recipients": []}
{"queue_name": "hold", "queue_id": "4A3", "arrival_time": 1, "message_size": 300, "forced_expire": false, "sender": "alice@example.com", "recipients": []}
{"queue_name": "incoming", "queue_id": "4A4", "arrival_time": 1, "message_size": 300, "forced_expire": false, "sender": "bob@example.com", "recipients": []}
"#;

    #[test]
    fn selects_by_sender_and_by_evidence() {
        let queue = parse_postqueue(QUEUE).unwrap();
        assert_eq!(queue.len(), 4);
        let evidence: HashSet<String> = ["4A4".to_string()].into();
        let ids = |action| {
            select(&queue, "<alice@example.com>", &evidence, action)
                .iter()
                .map(|m| m.queue_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(QueueAction::Hold), ["4A1", "4A4"]);
        assert_eq!(ids(QueueAction::Release), ["4A3"]);
        assert!(parse_postqueue("not json\n").is_err());
    }
}
