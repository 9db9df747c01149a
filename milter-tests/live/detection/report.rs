// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! What the benchmark found, style by style: the evidence (egress-milter's
//! log, the MTAs' logs), one [`Row`] per style, whether it met the goal
//! ([`Row::verdict`]) and the Markdown table of docs/benchmarks.md.

use super::styles::Kind;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What egress-milter logged about one identity's attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub accepted: usize,
    pub throttled: usize,
    pub rejected: usize,
    /// Refused as locked (the attempt that tripped the lock included).
    pub locked_refusals: usize,
}

impl Decisions {
    pub fn attempts(&self) -> usize {
        self.accepted + self.throttled + self.rejected + self.locked_refusals
    }
}

/// The `identity locked` line of one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockLine {
    pub rule: String,
    pub count: u64,
    pub limit: u64,
    pub window: String,
}

/// The value of ` key=value` in a log line (up to the next space; quotes
/// kept out).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let value = rest.split(' ').next().unwrap_or("");
    Some(value.trim_matches('"'))
}

/// egress-milter's decisions about `identity`, from its log.
pub fn decisions(log: &str, identity: &str) -> Decisions {
    let mut d = Decisions::default();
    for line in log.lines().filter(|l| field(l, "identity") == Some(identity)) {
        if line.contains(" accepted queue_id=") {
            d.accepted += 1;
        } else if line.contains(" refused temporarily queue_id=") {
            d.throttled += 1;
        } else if line.contains(" rejected queue_id=") {
            d.rejected += 1;
        } else if line.contains(" refused: identity is locked") {
            d.locked_refusals += 1;
        }
    }
    d
}

/// The `identity locked` line of `identity`, if it was locked by a rule.
pub fn lock_line(log: &str, identity: &str) -> Option<LockLine> {
    let line = log
        .lines()
        .find(|l| l.contains(" identity locked queue_id=") && field(l, "identity") == Some(identity))?;
    Some(LockLine {
        rule: field(line, "rule")?.to_string(),
        count: field(line, "count")?.parse().ok()?,
        limit: field(line, "limit")?.parse().ok()?,
        window: field(line, "window")?.to_string(),
    })
}

/// What a Postfix that relays to the one under test (a customer's MTA, the
/// webmail host) was told, from its mail log: deliveries to
/// `relay=127.0.0.1[127.0.0.1]:PORT` by recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamDeliveries {
    pub sent: usize,
    /// Deferred with a 4xx (a throttle, retried on Postfix's schedule).
    pub deferred: usize,
    /// Bounced with a 5xx: what the sender's user gets back as a refusal.
    pub bounced: usize,
    /// Bounced with the locked reply.
    pub bounced_locked: usize,
}

/// Parses the delivery lines of a relaying Postfix's mail log.
pub fn upstream_deliveries(maillog: &str, port: u16) -> UpstreamDeliveries {
    let relay = format!("relay=127.0.0.1[127.0.0.1]:{port},");
    let mut d = UpstreamDeliveries::default();
    for line in maillog.lines().filter(|l| l.contains(&relay)) {
        if line.contains(" status=sent ") {
            d.sent += 1;
        } else if line.contains(" status=deferred ") {
            d.deferred += 1;
        } else if line.contains(" status=bounced ") {
            d.bounced += 1;
            if line.contains("is suspended") {
                d.bounced_locked += 1;
            }
        }
    }
    d
}

/// Whether a relaying Postfix's first refusal as locked came in the first
/// pass over its queue: before any message was tried a second time. None
/// if it was never refused as locked.
pub fn locked_in_first_pass(maillog: &str, port: u16) -> Option<bool> {
    let relay = format!("relay=127.0.0.1[127.0.0.1]:{port},");
    let mut tries: HashMap<&str, usize> = HashMap::new();
    let mut retried = false;
    for line in maillog.lines().filter(|l| l.contains(&relay)) {
        if line.contains(" status=bounced ") && line.contains("is suspended") {
            return Some(!retried);
        }
        // "... postfix/smtp[PID]: QUEUEID: to=<...>, relay=..."
        let Some(queue_id) = line.split(": to=<").next().and_then(|head| head.rsplit(' ').next()) else {
            continue;
        };
        let n = tries.entry(queue_id).or_default();
        *n += 1;
        retried |= *n > 1;
    }
    None
}

/// One identity's lock, as the benchmark saw it.
#[derive(Clone, Debug)]
pub struct SeenLock {
    pub identity: String,
    /// Real time from the style's first message to the lock appearing in the
    /// lock list.
    pub after: Duration,
    pub line: Option<LockLine>,
}

/// One style's result.
#[derive(Clone, Debug)]
pub struct Row {
    pub style: String,
    pub kind: Kind,
    /// A retrying MTA (its 4xx are absorbed, not refusals).
    pub mta: bool,
    pub identities: Vec<String>,
    pub planned: usize,
    pub attempts: usize,
    pub accepted: usize,
    /// What should reach the sink: for a person, the accepted messages, for
    /// an MTA every planned message (in both cases those with a recipient
    /// that exists).
    pub deliverable: usize,
    /// Messages of the style at the sink (all before its lock: nothing of a
    /// locked identity leaves after it).
    pub delivered: usize,
    pub delivered_recipients: usize,
    /// For an MTA: messages still in its queue at the end (deferred, to be
    /// retried on its schedule), neither delivered nor lost.
    pub still_queued: usize,
    /// Recipients bounced back to the style's senders (the
    /// `Final-Recipient`s of the DSNs they received: stale addresses).
    pub bounces_back: usize,
    /// 4xx replies (seen by the client, or absorbed by a retrying MTA).
    pub throttled: usize,
    /// 5xx replies other than the locked reply (for an MTA: bounces).
    pub refused: usize,
    /// Locked replies (5xx "... is suspended ...").
    pub locked_replies: usize,
    /// Recipients refused (4xx or 5xx) in messages otherwise accepted.
    pub recipients_refused: usize,
    pub locks: Vec<SeenLock>,
    /// A lock of any one identity locks the style (a PHP script and its
    /// Unix user); otherwise every identity must be locked.
    pub any_lock: bool,
    /// For the expected lock: the lock came before the first retry.
    pub locked_in_first_pass: Option<bool>,
    pub notes: Vec<String>,
}

impl Row {
    pub fn all_locked(&self) -> bool {
        if self.any_lock {
            return !self.locks.is_empty();
        }
        !self.identities.is_empty() && self.locks.len() == self.identities.len()
    }

    /// The time until every identity of the style was locked.
    pub fn time_to_lock(&self) -> Option<Duration> {
        let after = self.locks.iter().map(|l| l.after);
        self.all_locked().then(|| {
            if self.any_lock {
                after.min().unwrap_or_default()
            } else {
                after.max().unwrap_or_default()
            }
        })
    }

    /// Ok, or why the style misses the goal.
    pub fn verdict(&self) -> Result<(), String> {
        match self.kind {
            Kind::Attacker if self.all_locked() => Ok(()),
            Kind::Attacker => Err(format!(
                "escaped: {} of {} identities locked, {} messages out",
                self.locks.len(),
                self.identities.len(),
                self.delivered
            )),
            Kind::HonestExpectedLock => {
                let Some(lock) = self.locks.first() else {
                    return Err("not locked (the batch was expected to be locked at its 901st attempt)".into());
                };
                let at_limit_plus_one = lock.line.as_ref().is_some_and(|l| l.count == l.limit);
                if !at_limit_plus_one {
                    return Err(format!(
                        "locked, but not at the attempt after the limit: {:?}",
                        lock.line
                    ));
                }
                if self.locked_in_first_pass != Some(true) {
                    return Err("locked, but not in the first pass (after a retry)".into());
                }
                Ok(())
            }
            Kind::Honest => {
                let mut problems = Vec::new();
                if !self.locks.is_empty() {
                    let who: Vec<&str> = self.locks.iter().map(|l| l.identity.as_str()).collect();
                    problems.push(format!("locked: {}", who.join(", ")));
                }
                if self.refused > 0 || self.locked_replies > 0 {
                    problems.push(format!("{} refusals (5xx)", self.refused + self.locked_replies));
                }
                if !self.mta && self.throttled > 0 {
                    problems.push(format!("{} throttled (4xx) where a person sees it", self.throttled));
                }
                if !self.mta && self.recipients_refused > 0 {
                    problems.push(format!("{} recipients refused", self.recipients_refused));
                }
                // An MTA over its hourly limit keeps the rest in its queue
                // and delivers it on its retry schedule: only what is
                // neither delivered nor still queued is lost.
                if self.delivered + self.still_queued < self.deliverable {
                    problems.push(format!(
                        "{} of {} messages delivered, {} still queued: the rest lost",
                        self.delivered, self.deliverable, self.still_queued
                    ));
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                }
            }
        }
    }
}

/// `d` as minutes and seconds: `4m10s`.
pub fn minutes_seconds(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// How the run was set up, for the table's heading.
pub struct RunInfo {
    pub form: &'static str,
    pub factor: u32,
    pub horizon: Duration,
    pub wall: Duration,
    pub load: String,
    pub config: String,
}

/// The Markdown report: the heading, the table, the verdicts and notes.
pub fn markdown(info: &RunInfo, rows: &[Row], descriptions: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Detection benchmark, {} form: windows and Postfix's retry schedule compressed {}x, {} of real time ({} \
         wall clock, {} in all), configuration {}; load average at the end: {}.\n",
        info.form,
        info.factor,
        minutes_seconds(info.horizon),
        minutes_seconds(info.horizon / info.factor),
        minutes_seconds(info.wall),
        info.config,
        info.load
    );
    out.push_str(
        "| style | kind | planned | attempts | accepted | left (msgs / rcpts) | rcpts bounced back | 4xx | 5xx | locked \
         replies | locked | time to lock | lock rule (count/limit) | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let kind = match (row.kind, row.mta) {
            (Kind::Attacker, _) => "attacker",
            (Kind::HonestExpectedLock, _) => "honest, lock expected",
            (Kind::Honest, true) => "honest (retrying MTA)",
            (Kind::Honest, false) => "honest",
        };
        let either = if row.any_lock { " (one suffices)" } else { "" };
        let locked = format!("{}/{}{either}", row.locks.len(), row.identities.len());
        let time = row.time_to_lock().map_or_else(|| "–".to_string(), minutes_seconds);
        let rules: Vec<String> = row
            .locks
            .iter()
            .filter_map(|l| l.line.as_ref())
            .map(|l| format!("{} ({}/{} in {})", l.rule, l.count, l.limit, l.window))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let rules = if rules.is_empty() {
            "–".to_string()
        } else {
            rules.join(", ")
        };
        let throttled = if row.mta {
            format!("{} (absorbed)", row.throttled)
        } else {
            row.throttled.to_string()
        };
        let verdict = match row.verdict() {
            Ok(()) => "**ok**".to_string(),
            Err(why) => format!("**FAIL**: {why}"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.style,
            kind,
            row.planned,
            row.attempts,
            row.accepted,
            row.delivered,
            row.delivered_recipients,
            row.bounces_back,
            throttled,
            row.refused,
            row.locked_replies,
            locked,
            time,
            rules,
            verdict
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("* {}: {n}", r.style)))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    if !descriptions.is_empty() {
        out.push_str("\nThe styles:\n\n");
        for (style, what) in descriptions {
            let _ = writeln!(out, "* **{style}**: {what}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-02T02:13:42.267359Z  INFO accepted queue_id=\"3F0159C40ED\" identity=blaster@example.com source=auth recipients=1 action=\"accept\"
2026-12-02T02:13:42.556583Z  INFO refused temporarily queue_id=\"870759C40F2\" identity=blaster@example.com source=auth stage=eom recipients=1 rule=messages-per-minute key=blaster@example.com count=30 requested=1 limit=30 window=1m reset_in=1m58s retry_in=1m also= action=tempfail
2026-12-02T02:13:42.557965Z  INFO refused temporarily queue_id=\"NONE\" identity=blaster@example.com.evil source=auth stage=mail
2026-12-02T02:13:43.339034Z  WARN identity locked queue_id=\"NONE\" identity=blaster@example.com source=auth rule=lock-messages count=900 limit=900 window=1h
2026-12-02T02:13:43.343267Z  INFO refused: identity is locked queue_id=\"NONE\" identity=blaster@example.com stage=rcpt action=\"locked\"
2026-12-02T02:13:43.343268Z  INFO accepted queue_id=\"3F0159C40EE\" identity=127.0.0.2 source=client-address recipients=2 action=\"accept\"
";

    #[test]
    fn decisions_and_locks_are_read_from_the_daemons_log() {
        assert_eq!(
            decisions(LOG, "blaster@example.com"),
            Decisions {
                accepted: 1,
                throttled: 1,
                rejected: 0,
                locked_refusals: 1
            }
        );
        assert_eq!(decisions(LOG, "blaster@example.com").attempts(), 3);
        assert_eq!(decisions(LOG, "127.0.0.2").accepted, 1);
        assert_eq!(
            lock_line(LOG, "blaster@example.com"),
            Some(LockLine {
                rule: "lock-messages".into(),
                count: 900,
                limit: 900,
                window: "1h".into()
            })
        );
        assert_eq!(lock_line(LOG, "127.0.0.2"), None);
    }

    #[test]
    fn upstream_deliveries_are_read_from_a_relaying_postfix_log() {
        let log = "\
Dec  2 02:20:01 mta postfix/smtp[1]: A1: to=<a@x.test>, relay=127.0.0.1[127.0.0.1]:4242, delay=0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as B1)
Dec  2 02:20:01 mta postfix/smtp[1]: A2: to=<b@x.test>, relay=127.0.0.1[127.0.0.1]:4242, delay=0.1, dsn=4.7.1, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.7.1 Rate limit (in reply to MAIL FROM command))
Dec  2 02:20:02 mta postfix/smtp[1]: A3: to=<c@x.test>, relay=127.0.0.1[127.0.0.1]:4242, delay=0.1, dsn=5.7.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.7.1 Sending as x is suspended; please contact your postmaster (in reply to RCPT TO command))
Dec  2 02:20:02 mta postfix/smtp[1]: A4: to=<d@x.test>, relay=127.0.0.1[127.0.0.1]:9999, delay=0.1, dsn=2.0.0, status=sent (250 ok)
";
        assert_eq!(
            upstream_deliveries(log, 4242),
            UpstreamDeliveries {
                sent: 1,
                deferred: 1,
                bounced: 1,
                bounced_locked: 1
            }
        );
    }

    #[test]
    fn a_lock_is_in_the_first_pass_until_a_message_is_tried_again() {
        let line = |id: &str, status: &str| {
            format!(
                "Dec  2 02:20:01 shop postfix/smtp[7]: {id}: to=<a@x.test>, relay=127.0.0.1[127.0.0.1]:4242, delay=1, {status}\n"
            )
        };
        let deferred = "dsn=4.7.1, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.7.1 Rate limit)";
        let locked = "dsn=5.7.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.7.1 Sending as x is suspended)";
        let first_pass = [
            line("A1", deferred),
            line("A2", deferred),
            line("A3", locked),
            line("A1", locked),
        ]
        .concat();
        assert_eq!(locked_in_first_pass(&first_pass, 4242), Some(true));
        let after_retry = [
            line("A1", deferred),
            line("A2", deferred),
            line("A1", deferred),
            line("A3", locked),
        ]
        .concat();
        assert_eq!(locked_in_first_pass(&after_retry, 4242), Some(false));
        assert_eq!(locked_in_first_pass(&line("A1", deferred), 4242), None);
        assert_eq!(locked_in_first_pass(&first_pass, 4243), None, "another relay");
    }

    fn row(kind: Kind) -> Row {
        Row {
            style: "s".into(),
            kind,
            mta: false,
            identities: vec!["a@x".into()],
            planned: 10,
            attempts: 10,
            accepted: 10,
            deliverable: 10,
            delivered: 10,
            delivered_recipients: 10,
            still_queued: 0,
            bounces_back: 0,
            throttled: 0,
            refused: 0,
            locked_replies: 0,
            recipients_refused: 0,
            locks: Vec::new(),
            any_lock: false,
            locked_in_first_pass: None,
            notes: Vec::new(),
        }
    }

    fn lock(count: u64, limit: u64) -> SeenLock {
        SeenLock {
            identity: "a@x".into(),
            after: Duration::from_secs(250),
            line: Some(LockLine {
                rule: "lock-messages".into(),
                count,
                limit,
                window: "10m".into(),
            }),
        }
    }

    #[test]
    fn verdicts_follow_the_goal() {
        assert!(row(Kind::Honest).verdict().is_ok());
        assert!(row(Kind::Attacker).verdict().is_err(), "an attacker not locked escaped");
        let mut attacker = row(Kind::Attacker);
        attacker.locks.push(lock(900, 900));
        assert!(attacker.verdict().is_ok());
        assert_eq!(attacker.time_to_lock(), Some(Duration::from_secs(250)));

        let mut person = row(Kind::Honest);
        person.throttled = 1;
        assert!(person.verdict().unwrap_err().contains("throttled"));
        let mut mta = row(Kind::Honest);
        mta.mta = true;
        mta.throttled = 470;
        assert!(mta.verdict().is_ok(), "a retrying MTA absorbs its throttles");
        mta.delivered = 9;
        assert!(mta.verdict().unwrap_err().contains("9 of 10 messages delivered"));
        mta.still_queued = 1;
        assert!(mta.verdict().is_ok(), "the rest waits in its queue for its next retry");
        let mut person = row(Kind::Honest);
        (person.delivered, person.deliverable) = (8, 8);
        assert!(
            person.verdict().is_ok(),
            "messages to stale addresses only do not arrive"
        );
        let mut locked = row(Kind::Honest);
        locked.locks.push(lock(900, 900));
        assert!(locked.verdict().unwrap_err().contains("locked: a@x"));

        // A PHP script or its user: one lock of the two is enough.
        let mut script = row(Kind::Attacker);
        script.identities.push("local:u".into());
        script.locks.push(lock(900, 900));
        assert!(script.verdict().is_err(), "every identity, unless any lock suffices");
        script.any_lock = true;
        assert!(script.verdict().is_ok());
        assert_eq!(script.time_to_lock(), Some(Duration::from_secs(250)));

        let mut expected = row(Kind::HonestExpectedLock);
        assert!(expected.verdict().is_err());
        expected.locks.push(lock(900, 900));
        expected.locked_in_first_pass = Some(false);
        assert!(expected.verdict().is_err());
        expected.locked_in_first_pass = Some(true);
        assert!(expected.verdict().is_ok());
        expected.locks[0] = lock(899, 900);
        assert!(expected.verdict().is_err());
    }

    #[test]
    fn the_table_has_a_row_per_style() {
        let mut attacker = row(Kind::Attacker);
        attacker.style = "fast blaster".into();
        attacker.locks.push(lock(900, 900));
        let info = RunInfo {
            form: "short",
            factor: 60,
            horizon: Duration::from_secs(5400),
            wall: Duration::from_secs(120),
            load: "1.00 0.50 0.20".into(),
            config: "conf/egress-milter.toml".into(),
        };
        let table = markdown(
            &info,
            &[row(Kind::Honest), attacker],
            &[("s".into(), "does things".into())],
        );
        assert!(
            table.contains("compressed 60x, 90m00s of real time (1m30s wall clock, 2m00s in all)"),
            "{table}"
        );
        assert!(
            table.contains("| fast blaster | attacker | 10 | 10 | 10 | 10 / 10 | 0 | 0 | 0 | 0 | 1/1 | 4m10s | lock-messages (900/900 in 10m) | **ok** |"),
            "{table}"
        );
        assert!(table.contains("| s | honest | 10 |"), "{table}");
        assert!(table.contains("* **s**: does things"), "{table}");
        assert_eq!(minutes_seconds(Duration::from_secs(61)), "1m01s");
    }
}
