// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `queue hold|release IDENTITY`: put an identity's mail that is already in
//! Postfix's queue on hold (or release it), with Postfix's own tools.
//!
//! Messages are found with `postqueue -j` (one JSON object per message) by
//! three criteria, in this order:
//!
//! 1. the envelope sender is the identity (case-insensitive);
//! 2. the queue id is one the daemon recorded for the identity (the status
//!    listener's evidence; only the last few per identity);
//! 3. the SASL login Postfix recorded in the queue file (`named_attribute:
//!    sasl_username=...` in `postcat -e -q ID ...`, read in batches) is the
//!    identity, normalised as the daemon normalises an auth identity. This
//!    finds a hijacked login's mail under any envelope sender.
//!
//! If postcat fails, the login criterion covers only what was read and the
//! output says so. Ids are fed to `postsuper -h -` (or `-H -`) on standard
//! input. Run as root: Postfix reserves `postsuper` for the superuser.

use crate::admin::Failure;
use crate::config::address::lock_key;
use crate::config::{Config, IdentityConfig};
use crate::ops::api::ExplainAnswer;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Queue ids given to one postcat process.
const POSTCAT_BATCH: usize = 500;
/// Longer postcat output lines are skipped (a SASL login is far shorter).
const POSTCAT_MAX_LINE: usize = 4096;
/// Bytes of postcat's standard error kept for the message.
const STDERR_KEPT: u64 = 2048;

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

/// Why a message was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// Its envelope sender is the identity.
    Sender,
    /// The daemon recorded its queue id for the identity.
    QueueId,
    /// Postfix recorded the identity as its SASL login.
    Login,
}

/// Parses `postqueue -j` output; lines that are not messages are errors.
pub fn parse_postqueue(out: &str) -> Result<Vec<QueuedMessage>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("postqueue -j line {}: {e}", i + 1)))
        .collect()
}

/// The messages `action` applies to, each with the criterion that chose it
/// (sender first, then recorded queue id), or `None`: those are left for
/// the SASL login criterion.
pub fn select<'a>(
    queue: &'a [QueuedMessage],
    identity: &str,
    evidence: &HashSet<String>,
    action: QueueAction,
) -> Vec<(&'a QueuedMessage, Option<Criterion>)> {
    let identity = identity.trim().trim_start_matches('<').trim_end_matches('>');
    queue
        .iter()
        .filter(|m| action.applies_to(&m.queue_name))
        .map(|m| {
            let why = if m.sender.eq_ignore_ascii_case(identity) {
                Some(Criterion::Sender)
            } else if evidence.contains(&m.queue_id) {
                Some(Criterion::QueueId)
            } else {
                None
            };
            (m, why)
        })
        .collect()
}

/// What `postcat -e` printed: the queue files in the order shown, and the
/// SASL login recorded in each that has one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostcatRecords {
    /// Queue ids, one per `*** ENVELOPE RECORDS queue/[hash/]ID ***`.
    pub files: Vec<String>,
    /// (queue id, `sasl_username` as recorded).
    pub logins: Vec<(String, String)>,
    in_envelope: bool,
}

impl PostcatRecords {
    /// Takes one output line (without its newline). Only the first
    /// `named_attribute: sasl_username=` of a file's envelope section counts.
    pub fn line(&mut self, line: &str) {
        if let Some(banner) = line.strip_prefix("*** ").and_then(|l| l.strip_suffix(" ***")) {
            self.in_envelope = false;
            if let Some(path) = banner.strip_prefix("ENVELOPE RECORDS ") {
                let id = path.rsplit('/').next().unwrap_or(path);
                self.files.push(id.to_string());
                self.in_envelope = true;
            }
            return;
        }
        if !self.in_envelope {
            return;
        }
        if let (Some(login), Some(id)) = (line.strip_prefix("named_attribute: sasl_username="), self.files.last()) {
            self.logins.push((id.clone(), login.to_string()));
            self.in_envelope = false;
        }
    }
}

/// Parses the output of `postcat -e [-q] ...` for one or more queue files.
pub fn parse_postcat(out: &str) -> PostcatRecords {
    let mut records = PostcatRecords::default();
    out.lines().for_each(|l| records.line(l));
    records
}

/// Whether postcat stopped because queue file `id` no longer exists (the
/// message left the queue after `postqueue -j` listed it).
pub fn queue_file_gone(stderr: &str, id: &str) -> bool {
    stderr.contains(&format!("open queue file {id}: No such file or directory"))
}

/// Calls `f` with each line of `reader` (newline stripped); lines longer
/// than `max` bytes are skipped, so memory stays bounded.
pub fn for_each_line(mut reader: impl BufRead, max: usize, mut f: impl FnMut(&str)) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let n = (&mut reader).take(max as u64).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if n == max && buf.last() != Some(&b'\n') {
            // Too long: drop the rest of the line too.
            loop {
                let available = reader.fill_buf()?;
                if available.is_empty() {
                    return Ok(());
                }
                match available.iter().position(|&b| b == b'\n') {
                    Some(pos) => {
                        reader.consume(pos + 1);
                        break;
                    }
                    None => {
                        let len = available.len();
                        reader.consume(len);
                    }
                }
            }
            continue;
        }
        f(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
    }
}

/// Runs one `postcat -e -q ID...`; on failure, what it printed before
/// and its error.
fn postcat(ids: &[&str], postfix_config: Option<&Path>) -> Result<PostcatRecords, (PostcatRecords, String)> {
    let mut child = postfix_command("postcat", postfix_config)
        .arg("-e")
        .arg("-q")
        .args(ids)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (PostcatRecords::default(), format!("cannot run postcat: {e}")))?;
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut e).take(STDERR_KEPT).read_to_end(&mut kept);
            let _ = io::copy(&mut e, &mut io::sink());
            String::from_utf8_lossy(&kept).trim().to_string()
        })
    });
    let mut records = PostcatRecords::default();
    let read = match child.stdout.take() {
        Some(out) => for_each_line(BufReader::new(out), POSTCAT_MAX_LINE, |l| records.line(l)),
        None => Ok(()),
    };
    if read.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    match (read, status) {
        (Err(e), _) => Err((records, format!("cannot read postcat's output: {e}"))),
        (Ok(()), Err(e)) => Err((records, format!("postcat failed: {e}"))),
        (Ok(()), Ok(s)) if !s.success() => Err((records, format!("postcat -e -q failed ({s}): {stderr}"))),
        (Ok(()), Ok(_)) => Ok(records),
    }
}

/// The outcome of looking for the identity's SASL login in queue files.
#[derive(Debug, Default)]
struct LoginLookup {
    /// Queue ids whose recorded login is the identity.
    matched: HashSet<String>,
    /// Queue files postcat showed.
    checked: usize,
    /// Why the lookup stopped early.
    failure: Option<String>,
}

/// Reads the SASL login of each of `ids` with `postcat` (one call per
/// `POSTCAT_BATCH` ids). A message that left the queue meanwhile is skipped;
/// any other failure ends the lookup with what was read until then.
fn logins_matching(
    ids: &[&str],
    want: &str,
    identity: &IdentityConfig,
    mut postcat: impl FnMut(&[&str]) -> Result<PostcatRecords, (PostcatRecords, String)>,
) -> LoginLookup {
    let wanted: HashSet<&str> = ids.iter().copied().collect();
    let mut lookup = LoginLookup::default();
    let mut rest = ids;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(POSTCAT_BATCH)];
        let (records, error) = match postcat(batch) {
            Ok(records) => (records, None),
            Err((records, error)) => (records, Some(error)),
        };
        lookup.checked += records.files.len();
        lookup.matched.extend(
            records
                .logins
                .into_iter()
                .filter(|(id, login)| wanted.contains(id.as_str()) && lock_key(identity, login) == want)
                .map(|(id, _)| id),
        );
        let done = records.files.len().min(batch.len());
        match error {
            None => rest = &rest[batch.len()..],
            // postcat stops at the first file it cannot open: go on after it.
            Some(e) if done < batch.len() && queue_file_gone(&e, batch[done]) => rest = &rest[done + 1..],
            Some(e) => {
                lookup.failure = Some(e);
                break;
            }
        }
    }
    lookup
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
/// answers; otherwise why not (matching then goes without them).
fn evidence(config: &Config, identity: &str) -> Result<HashSet<String>, String> {
    let path = format!("/api/identities/{}", crate::ops::api::percent_encode(identity.trim()));
    let body = crate::admin::client::get(config, &path).map_err(|f| f.message)?;
    let answer: ExplainAnswer = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(answer
        .activity
        .map(|a| a.queue_ids)
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// `matched: 2 by envelope sender, 9 by SASL login, 1 by queue id recorded by the daemon`.
pub fn summary(chosen: &[(&QueuedMessage, Criterion)]) -> String {
    let count = |c: Criterion| chosen.iter().filter(|(_, why)| *why == c).count();
    format!(
        "matched: {} by envelope sender, {} by SASL login, {} by queue id recorded by the daemon",
        count(Criterion::Sender),
        count(Criterion::Login),
        count(Criterion::QueueId)
    )
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
                "note: no queue ids from the daemon ({why}); matching by envelope sender and SASL login only"
            );
            HashSet::new()
        }
    };
    let queue = list_queue(postfix_config)?;
    let mut selected = select(&queue, identity, &evidence, action);
    match_by_login(config, identity, &mut selected, postfix_config, &mut out);
    let chosen: Vec<(&QueuedMessage, Criterion)> =
        selected.into_iter().filter_map(|(m, why)| Some((m, why?))).collect();
    let ids: Vec<&str> = chosen.iter().map(|(m, _)| m.queue_id.as_str()).collect();
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
    if !dry_run {
        postsuper(action, &ids, postfix_config)?;
    }
    let _ = writeln!(
        out,
        "{}{} {} message(s) of {}: {}\n{}",
        if dry_run { "would have " } else { "" },
        action.verb(),
        ids.len(),
        identity.trim(),
        ids.join(" "),
        summary(&chosen)
    );
    Ok(out)
}

/// The whole queue, as `postqueue -j` lists it.
fn list_queue(postfix_config: Option<&Path>) -> Result<Vec<QueuedMessage>, Failure> {
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
    parse_postqueue(&String::from_utf8_lossy(&listed.stdout)).map_err(Failure::new)
}

/// Marks the messages not chosen otherwise whose queue file records the
/// identity as its SASL login (read with postcat); notes in `out` what
/// could not be read.
fn match_by_login(
    config: &Config,
    identity: &str,
    selected: &mut [(&QueuedMessage, Option<Criterion>)],
    postfix_config: Option<&Path>,
    out: &mut String,
) {
    let others: Vec<&str> = selected
        .iter()
        .filter(|(_, why)| why.is_none())
        .map(|(m, _)| m.queue_id.as_str())
        .collect();
    if others.is_empty() {
        return;
    }
    let want = lock_key(&config.identity, identity);
    let lookup = logins_matching(&others, &want, &config.identity, |batch| postcat(batch, postfix_config));
    if let Some(why) = &lookup.failure {
        let _ = writeln!(
            out,
            "note: {why}; SASL login read for {} of {} other message(s), the rest matched by envelope \
             sender and recorded queue id only",
            lookup.checked,
            others.len()
        );
    }
    for (m, why) in selected.iter_mut() {
        if why.is_none() && lookup.matched.contains(&m.queue_id) {
            *why = Some(Criterion::Login);
        }
    }
}

/// Holds or releases the messages `ids` with `postsuper -h -` / `-H -`.
fn postsuper(action: QueueAction, ids: &[&str], postfix_config: Option<&Path>) -> Result<(), Failure> {
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
    Ok(())
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
        let chosen = |action| {
            select(&queue, "<alice@example.com>", &evidence, action)
                .iter()
                .map(|(m, why)| (m.queue_id.clone(), *why))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            chosen(QueueAction::Hold),
            [
                ("4A1".to_string(), Some(Criterion::Sender)),
                ("4A2".to_string(), None),
                ("4A4".to_string(), Some(Criterion::QueueId)),
            ]
        );
        assert_eq!(
            chosen(QueueAction::Release),
            [("4A3".to_string(), Some(Criterion::Sender))]
        );
        assert!(parse_postqueue("not json\n").is_err());
    }

    /// `postcat -c DIR -e -q 52D5A992A2F 5555E992A33` on Postfix 3.7.11
    /// (the live suite's instance), then a third message without SASL
    /// login (the second one with its `sasl_` lines removed).
    const POSTCAT: &str = r#"*** ENVELOPE RECORDS deferred/5/52D5A992A2F ***
message_size:             425             743               1               0             425               0
message_arrival_time: Mon Nov 23 12:17:59 2026
create_time: Mon Nov 23 12:17:59 2026
named_attribute: log_ident=52D5A992A2F
named_attribute: rewrite_context=local
named_attribute: sasl_method=PLAIN
named_attribute: sasl_username=alice@example.com
sender: newsletter@example.net
named_attribute: log_client_name=localhost
named_attribute: log_client_address=127.0.0.1
named_attribute: log_client_port=55802
named_attribute: log_message_origin=localhost[127.0.0.1]
named_attribute: log_helo_name=client.test
named_attribute: log_protocol_name=ESMTP
named_attribute: client_name=localhost
named_attribute: reverse_client_name=localhost
named_attribute: client_address=127.0.0.1
named_attribute: client_port=55802
named_attribute: server_address=127.0.0.1
named_attribute: server_port=42403
named_attribute: helo_name=client.test
named_attribute: protocol_name=ESMTP
named_attribute: client_address_type=2
named_attribute: dsn_orig_rcpt=rfc822;carol@remote.test
original_recipient: carol@remote.test
recipient: carol@remote.test
*** MESSAGE CONTENTS deferred/5/52D5A992A2F ***
*** HEADER EXTRACTED deferred/5/52D5A992A2F ***
*** MESSAGE FILE END deferred/5/52D5A992A2F ***
*** ENVELOPE RECORDS deferred/5/5555E992A33 ***
message_size:             418             734               1               0             418               0
message_arrival_time: Mon Nov 23 12:17:59 2026
create_time: Mon Nov 23 12:17:59 2026
named_attribute: log_ident=5555E992A33
named_attribute: rewrite_context=local
named_attribute: sasl_method=PLAIN
named_attribute: sasl_username=bob@example.com
sender: bob@example.com
named_attribute: log_client_name=localhost
named_attribute: log_client_address=127.0.0.1
named_attribute: log_client_port=55804
named_attribute: log_message_origin=localhost[127.0.0.1]
named_attribute: log_helo_name=client.test
named_attribute: log_protocol_name=ESMTP
named_attribute: client_name=localhost
named_attribute: reverse_client_name=localhost
named_attribute: client_address=127.0.0.1
named_attribute: client_port=55804
named_attribute: server_address=127.0.0.1
named_attribute: server_port=42403
named_attribute: helo_name=client.test
named_attribute: protocol_name=ESMTP
named_attribute: client_address_type=2
named_attribute: dsn_orig_rcpt=rfc822;carol@remote.test
original_recipient: carol@remote.test
recipient: carol@remote.test
*** MESSAGE CONTENTS deferred/5/5555E992A33 ***
*** HEADER EXTRACTED deferred/5/5555E992A33 ***
*** MESSAGE FILE END deferred/5/5555E992A33 ***
*** ENVELOPE RECORDS deferred/4/4A9 ***
message_size:             418             734               1               0             418               0
message_arrival_time: Mon Nov 23 12:17:59 2026
create_time: Mon Nov 23 12:17:59 2026
named_attribute: log_ident=4A9
named_attribute: rewrite_context=local
sender: bob@example.com
named_attribute: log_client_name=localhost
named_attribute: log_client_address=127.0.0.1
named_attribute: log_client_port=55804
named_attribute: log_message_origin=localhost[127.0.0.1]
named_attribute: log_helo_name=client.test
named_attribute: log_protocol_name=ESMTP
named_attribute: client_name=localhost
named_attribute: reverse_client_name=localhost
named_attribute: client_address=127.0.0.1
named_attribute: client_port=55804
named_attribute: server_address=127.0.0.1
named_attribute: server_port=42403
named_attribute: helo_name=client.test
named_attribute: protocol_name=ESMTP
named_attribute: client_address_type=2
named_attribute: dsn_orig_rcpt=rfc822;carol@remote.test
original_recipient: carol@remote.test
recipient: carol@remote.test
*** MESSAGE CONTENTS deferred/4/4A9 ***
*** HEADER EXTRACTED deferred/4/4A9 ***
*** MESSAGE FILE END deferred/4/4A9 ***
"#;

    #[test]
    fn postcat_output_gives_each_files_sasl_login() {
        let records = parse_postcat(POSTCAT);
        assert_eq!(records.files, ["52D5A992A2F", "5555E992A33", "4A9"]);
        assert_eq!(
            records.logins,
            [
                ("52D5A992A2F".to_string(), "alice@example.com".to_string()),
                ("5555E992A33".to_string(), "bob@example.com".to_string()),
            ]
        );
        // Only the envelope section counts, and only its first login.
        let forged = "*** ENVELOPE RECORDS hold/7B1 ***\nsender: x@example.net\n\
                      named_attribute: sasl_username=carol@example.com\n\
                      named_attribute: sasl_username=alice@example.com\n\
                      *** MESSAGE CONTENTS hold/7B1 ***\n\
                      named_attribute: sasl_username=alice@example.com\n\
                      *** HEADER EXTRACTED hold/7B1 ***\n\
                      named_attribute: sasl_username=alice@example.com\n";
        let records = parse_postcat(forged);
        assert_eq!(records.files, ["7B1"]);
        assert_eq!(records.logins, [("7B1".to_string(), "carol@example.com".to_string())]);
        assert_eq!(parse_postcat(""), PostcatRecords::default());
    }

    #[test]
    fn logins_compare_as_the_daemon_normalises_them() {
        let mut c = IdentityConfig::default();
        assert_eq!(lock_key(&c, " <Alice@Example.COM> "), "alice@example.com");
        assert_eq!(lock_key(&c, "Alice"), "alice");
        // Not an address the daemon would take: still trimmed and lowercased.
        assert_eq!(lock_key(&c, " A B "), "a b");
        // Non-ASCII is lowercased as the lock list does it (it used to be
        // ASCII-only here, so `queue hold` could miss a locked identity).
        assert_eq!(lock_key(&c, "ÖZ B"), "öz b");
        c.fold_subaddress = true;
        assert_eq!(lock_key(&c, "alice+x@example.com"), lock_key(&c, "ALICE@example.com"));
    }

    #[test]
    fn a_vanished_queue_file_is_told_apart_from_other_failures() {
        let gone = "postcat: fatal: open queue file NOSUCH123: No such file or directory";
        assert!(queue_file_gone(gone, "NOSUCH123"));
        assert!(!queue_file_gone(gone, "4A1"));
        assert!(!queue_file_gone(
            "postcat: fatal: open queue file 4A1: Permission denied",
            "4A1"
        ));
    }

    #[test]
    fn long_lines_are_skipped_whole() {
        let long = "x".repeat(100);
        let input = format!("*** ENVELOPE RECORDS deferred/A/A1 ***\n{long}\nnamed_attribute: sasl_username=a\r\nlast");
        let mut lines = Vec::new();
        for_each_line(io::Cursor::new(input.as_bytes()), 40, |l| lines.push(l.to_string())).unwrap();
        assert_eq!(
            lines,
            [
                "*** ENVELOPE RECORDS deferred/A/A1 ***",
                "named_attribute: sasl_username=a",
                "last"
            ]
        );
        // A line of exactly the bound (newline included) is kept.
        let mut lines = Vec::new();
        for_each_line(io::Cursor::new(b"abc\nde"), 4, |l| lines.push(l.to_string())).unwrap();
        assert_eq!(lines, ["abc", "de"]);
    }

    /// A stand-in for postcat over a queue of `logins` (id, login): like
    /// the real one it stops at the first id it has no file for.
    fn fake_postcat<'a>(
        logins: &'a [(String, &'a str)],
        calls: &'a std::cell::RefCell<Vec<usize>>,
        fail_at: Option<&'a str>,
    ) -> impl FnMut(&[&str]) -> Result<PostcatRecords, (PostcatRecords, String)> + 'a {
        move |batch| {
            calls.borrow_mut().push(batch.len());
            let mut out = String::new();
            for id in batch {
                if Some(*id) == fail_at {
                    let error = format!("postcat: fatal: open queue file {id}: Permission denied");
                    return Err((parse_postcat(&out), error));
                }
                let Some((_, login)) = logins.iter().find(|(i, _)| i == id) else {
                    let error = format!("postcat: fatal: open queue file {id}: No such file or directory");
                    return Err((parse_postcat(&out), error));
                };
                out.push_str(&format!(
                    "*** ENVELOPE RECORDS deferred/{}/{id} ***\nnamed_attribute: sasl_username={login}\n\
                     sender: x@example.net\n*** MESSAGE FILE END deferred/{}/{id} ***\n",
                    &id[..1],
                    &id[..1]
                ));
            }
            Ok(parse_postcat(&out))
        }
    }

    #[test]
    fn logins_are_read_in_batches_past_vanished_files_and_kept_on_failure() {
        let config = IdentityConfig::default();
        // 1200 messages, every third one alice's (in any case).
        let logins: Vec<(String, &str)> = (0..1200)
            .map(|i| {
                let login = if i % 3 == 0 {
                    "Alice@Example.com"
                } else {
                    "bob@example.com"
                };
                (format!("B{i:04}"), login)
            })
            .collect();
        let mut ids: Vec<String> = logins.iter().map(|(id, _)| id.clone()).collect();
        // Two listed by postqueue but delivered before postcat ran.
        ids.insert(10, "GONE1".into());
        ids.insert(700, "GONE2".into());
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let want = lock_key(&config, "alice@example.com");

        let calls = std::cell::RefCell::new(Vec::new());
        let lookup = logins_matching(&ids, &want, &config, fake_postcat(&logins, &calls, None));
        assert_eq!(lookup.failure, None);
        assert_eq!(lookup.checked, 1200);
        assert_eq!(lookup.matched.len(), 400);
        assert!(lookup.matched.contains("B0000") && !lookup.matched.contains("B0001"));
        // Each call takes at most 500 ids; a vanished file costs one more call.
        assert!(calls.borrow().iter().all(|&n| n <= POSTCAT_BATCH), "{calls:?}");
        assert_eq!(calls.borrow().len(), 5, "{calls:?}");

        // Any other failure stops the lookup; what was read still counts.
        let calls = std::cell::RefCell::new(Vec::new());
        let lookup = logins_matching(&ids, &want, &config, fake_postcat(&logins, &calls, Some("B0600")));
        let failure = lookup.failure.expect("a failure");
        assert!(failure.contains("Permission denied"), "{failure}");
        assert_eq!(lookup.checked, 600);
        assert_eq!(lookup.matched.len(), 200);
        assert_eq!(calls.borrow().len(), 3, "{calls:?}");
    }

    #[test]
    fn summary_counts_each_criterion() {
        let queue = parse_postqueue(QUEUE).unwrap();
        let chosen = [
            (&queue[0], Criterion::Sender),
            (&queue[1], Criterion::Login),
            (&queue[3], Criterion::Login),
        ];
        assert_eq!(
            summary(&chosen),
            "matched: 1 by envelope sender, 2 by SASL login, 0 by queue id recorded by the daemon"
        );
    }
}
