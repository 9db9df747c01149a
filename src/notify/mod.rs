// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Lock notifications: when an identity is locked automatically, run the
//! configured command, mail a report to the postmaster and an abuse report
//! (ARF, RFC 5965) to the abuse desks.
//!
//! A session only puts a [`LockEvent`] on a bounded queue ([`Notifier`],
//! `try_send`: never waits). The background task [`run`] takes events off
//! the queue, drops duplicates, applies the hourly cap ([`Gate`]: one
//! decision per lock, for the command and both reports) and runs the
//! command and sends the mail in tasks of their own, so a slow or failing
//! notifier never delays a mail decision nor the next notification.

mod arf;
mod command;
mod mail;
pub mod sample;
pub mod smtp;

use arf::send_arf;
pub use arf::{USER_AGENT, compose_arf};
pub use command::command_env;
use command::{Ran, run_command};
use mail::send_report;
pub use mail::{ComposeError, Report, compose_report, rfc5322_date};
pub use sample::{Sample, SampleCache};

use crate::clock::Clock;
use crate::config::{Config, Counted, Scope};
use crate::locks::file::{LockEntry, LockSource, Timestamp};
use crate::policy::Trip;
use crate::policy::identity::Identity;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

/// Events waiting for the notifier. A lock storm beyond this is dropped
/// (and counted) rather than let sessions wait: the cap would suppress most
/// of it anyway, and every lock is logged and written to the lock list.
pub const QUEUE_CAPACITY: usize = 64;

/// The length of the cap's window.
const CAP_WINDOW: Duration = Duration::from_secs(3600);

/// At shutdown, notifications under way get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Locks remembered to recognise a duplicate event for the same lock.
const DEDUPE_MEMORY: usize = 4096;

/// One new automatic lock, as the notifier reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockEvent {
    pub identity: String,
    /// Where the identity came from: `auth`, `header:…`, `client-address`…
    pub identity_source: String,
    /// Always `auto` today: manual locks are not notified.
    pub source: LockSource,
    pub rule: String,
    /// The reason written in the lock list.
    pub reason: String,
    pub counted: Counted,
    pub scope: Scope,
    /// The rule's count when it tripped, and its limit in `window`.
    pub count: u32,
    pub limit: u32,
    pub window: Duration,
    pub locked_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// Queue ids of the evidence: the message that tripped the lock first.
    pub queue_ids: Vec<String>,
    /// The message the ARF report is about (see [`sample`]); `None` when
    /// `notify.arf_to` is not set.
    pub sample: Option<Arc<Sample>>,
}

impl LockEvent {
    /// What a notification says about a new automatic lock: the one place
    /// where its evidence is put together. `queue_ids` holds the queue id
    /// of the message that tripped the lock first, then recent ones.
    pub fn new(
        lock: &LockEntry,
        identity: &Identity,
        trip: &Trip,
        queue_ids: Vec<String>,
        sample: Option<Arc<Sample>>,
    ) -> Self {
        LockEvent {
            identity: lock.identity.clone(),
            identity_source: identity.source.to_string(),
            source: lock.source,
            rule: trip.rule.clone(),
            reason: lock.reason.clone(),
            counted: trip.counted,
            scope: trip.scope,
            count: trip.usage.used,
            limit: trip.usage.limit,
            window: trip.rate.window,
            locked_at: lock.locked_at,
            expires_at: lock.expires_at,
            queue_ids,
            sample,
        }
    }
}

/// The sessions' end of the notification queue.
pub struct Notifier {
    tx: mpsc::Sender<LockEvent>,
    stats: Arc<Stats>,
    /// Sample messages for ARF reports (filled only while `arf_to` is set).
    samples: SampleCache,
}

/// The notifier's end of the queue, for [`run`].
pub struct Queue {
    rx: mpsc::Receiver<LockEvent>,
    stats: Arc<Stats>,
}

/// What became of notifications since start, for metrics and status.
#[derive(Debug, Default)]
pub struct Stats {
    /// Dropped because the queue was full (or the notifier had stopped).
    pub dropped: AtomicU64,
    /// Further events for a lock already notified.
    pub duplicates: AtomicU64,
    /// Left out by `max_per_hour`.
    pub suppressed: AtomicU64,
    pub commands_ok: AtomicU64,
    /// Non-zero exit, killed by a signal, or not startable.
    pub commands_failed: AtomicU64,
    /// Killed at `command_timeout`.
    pub commands_killed: AtomicU64,
    pub reports_sent: AtomicU64,
    /// Given up on (permanent error or every attempt failed).
    pub reports_failed: AtomicU64,
    /// ARF reports the relay accepted.
    pub arf_sent: AtomicU64,
    /// ARF reports given up on.
    pub arf_failed: AtomicU64,
}

impl Stats {
    /// Each counter with its `outcome` label in the metrics.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        [
            ("dropped", &self.dropped),
            ("duplicate", &self.duplicates),
            ("suppressed", &self.suppressed),
            ("command_ok", &self.commands_ok),
            ("command_failed", &self.commands_failed),
            ("command_killed", &self.commands_killed),
            ("mail_sent", &self.reports_sent),
            ("mail_failed", &self.reports_failed),
            ("arf_sent", &self.arf_sent),
            ("arf_failed", &self.arf_failed),
        ]
        .into_iter()
        .map(|(label, c)| (label, c.load(Ordering::Relaxed)))
        .collect()
    }

    fn add(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Notifier {
    /// A notifier and the queue [`run`] reads.
    pub fn channel(capacity: usize) -> (Arc<Notifier>, Queue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(Stats::default());
        (
            Arc::new(Notifier {
                tx,
                stats: stats.clone(),
                samples: SampleCache::default(),
            }),
            Queue { rx, stats },
        )
    }

    /// Queues an event without waiting; a full queue drops it (logged, counted).
    pub fn notify(&self, event: LockEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                let dropped = Stats::add(&self.stats.dropped);
                warn!(
                    identity = %event.identity,
                    rule = %event.rule,
                    dropped,
                    "lock notification dropped: the notification queue is full"
                );
            }
            Err(mpsc::error::TrySendError::Closed(event)) => {
                let dropped = Stats::add(&self.stats.dropped);
                warn!(identity = %event.identity, dropped, "lock notification dropped: the notifier has stopped");
            }
        }
    }

    /// Events dropped because the queue was full (since start).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Counts of what became of notifications since start.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The last accepted messages of the identities that sent last, for
    /// the sample of an ARF report.
    pub fn samples(&self) -> &SampleCache {
        &self.samples
    }
}

/// What [`Gate::admit`] decided about one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Notify; `after_suppressed` notifications were suppressed by the cap
    /// since the last one sent.
    Send { after_suppressed: u64 },
    /// The same lock was already notified.
    Duplicate,
    /// Over the hourly cap; `first` for the first one of a run.
    Suppressed { first: bool },
}

/// One notification per lock, at most `max_per_hour` in any hour.
pub struct Gate {
    clock: Clock,
    /// Identity to the `locked_at` of the last lock seen: the same pair
    /// again is the same lock; a later lock of the identity is a new one.
    seen: HashMap<String, Timestamp>,
    /// Monotonic times (ns) of the notifications sent in the last hour.
    sent: VecDeque<u64>,
    /// Suppressed since the last notification sent.
    suppressed: u64,
}

impl Gate {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            seen: HashMap::new(),
            sent: VecDeque::new(),
            suppressed: 0,
        }
    }

    pub fn admit(&mut self, event: &LockEvent, max_per_hour: u32) -> Admission {
        if self.seen.get(&event.identity) == Some(&event.locked_at) {
            return Admission::Duplicate;
        }
        if self.seen.len() >= DEDUPE_MEMORY {
            // A duplicate follows its lock within moments: old entries can go.
            let horizon = self.clock.wall_now().checked_sub(CAP_WINDOW).unwrap_or(UNIX_EPOCH);
            self.seen.retain(|_, at| at.0 > horizon);
            if self.seen.len() >= DEDUPE_MEMORY {
                self.seen.clear();
            }
        }
        self.seen.insert(event.identity.clone(), event.locked_at);
        let now = self.clock.elapsed_nanos();
        let window = u64::try_from(CAP_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        while self.sent.front().is_some_and(|&t| now.saturating_sub(t) >= window) {
            self.sent.pop_front();
        }
        if self.sent.len() >= max_per_hour as usize {
            self.suppressed += 1;
            return Admission::Suppressed {
                first: self.suppressed == 1,
            };
        }
        self.sent.push_back(now);
        Admission::Send {
            after_suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// Suppressed since the last notification sent.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// The notifier task: runs until `stop` resolves, then finishes what is
/// queued and gives the notifications under way a few seconds.
/// `config` returns the configuration in force, so `[notify]` is reloadable.
pub async fn run(
    queue: Queue,
    config: impl Fn() -> Arc<Config> + Send + 'static,
    clock: Clock,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let Queue { mut rx, stats } = queue;
    let mut gate = Gate::new(clock);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => dispatch(event, &config(), &mut gate, &mut tasks, &stats),
                None => break,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
            () = &mut stop => break,
        }
    }
    rx.close();
    while let Ok(event) = rx.try_recv() {
        dispatch(event, &config(), &mut gate, &mut tasks, &stats);
    }
    let finish = async {
        while let Some(done) = tasks.join_next().await {
            log_join(done);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        warn!(
            unfinished = tasks.len(),
            "stopping with lock notifications unfinished (commands are killed)"
        );
        tasks.shutdown().await;
    }
    if gate.suppressed() > 0 {
        warn!(
            suppressed = gate.suppressed(),
            "{} lock notification(s) were suppressed by notify.max_per_hour",
            gate.suppressed()
        );
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && !e.is_cancelled()
    {
        error!("lock notification task failed: {e}");
    }
}

fn dispatch(event: LockEvent, config: &Config, gate: &mut Gate, tasks: &mut JoinSet<()>, stats: &Arc<Stats>) {
    let notify = &config.notify;
    if !notify.is_enabled() {
        debug!(identity = %event.identity, "lock not notified: no [notify] command, mail_to or arf_to");
        return;
    }
    match gate.admit(&event, notify.max_per_hour) {
        Admission::Duplicate => {
            Stats::add(&stats.duplicates);
            debug!(identity = %event.identity, "lock already notified");
            return;
        }
        Admission::Suppressed { first } => {
            Stats::add(&stats.suppressed);
            if first {
                warn!(
                    max_per_hour = notify.max_per_hour,
                    "lock notifications suppressed: notify.max_per_hour reached; locks are still logged and written to the lock list"
                );
            }
            debug!(identity = %event.identity, "lock notification suppressed by the hourly cap");
            return;
        }
        Admission::Send { after_suppressed } if after_suppressed > 0 => {
            warn!(
                suppressed = after_suppressed,
                "lock notifications resumed after {after_suppressed} suppressed by notify.max_per_hour"
            );
        }
        Admission::Send { .. } => {}
    }
    let host = notify.hostname.clone().unwrap_or_else(system_hostname);
    let event = Arc::new(event);
    if let Some(argv) = notify.argv() {
        let command = run_command(argv.to_vec(), notify.command_timeout.0, event.clone(), host.clone());
        let stats = stats.clone();
        tasks.spawn(async move {
            Stats::add(match command.await {
                Ran::Ok => &stats.commands_ok,
                Ran::Failed => &stats.commands_failed,
                Ran::Killed => &stats.commands_killed,
            });
        });
    }
    if !notify.mail_to.is_empty() {
        let report = send_report(notify.clone(), event.clone(), host.clone());
        let stats = stats.clone();
        tasks.spawn(async move {
            Stats::add(if report.await {
                &stats.reports_sent
            } else {
                &stats.reports_failed
            });
        });
    }
    if !notify.arf_to.is_empty() {
        let report = send_arf(notify.clone(), event, host);
        let stats = stats.clone();
        tasks.spawn(async move {
            Stats::add(if report.await {
                &stats.arf_sent
            } else {
                &stats.arf_failed
            });
        });
    }
}

/// The kernel's host name, or `localhost`.
pub fn system_hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    if name.is_empty() {
        "localhost".into()
    } else {
        name.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;
    use std::time::SystemTime;

    fn event(identity: &str, clock: &Clock) -> LockEvent {
        LockEvent {
            identity: identity.into(),
            identity_source: "auth".into(),
            source: LockSource::Auto,
            rule: "lock-messages".into(),
            reason: "rule \"lock-messages\" exceeded: 6/6 messages per identity in 1h (identity from auth, queue id 4ABCDEF)".into(),
            counted: Counted::Messages,
            scope: Scope::Identity,
            count: 6,
            limit: 6,
            window: Duration::from_secs(3600),
            locked_at: Timestamp(clock.wall_now()),
            expires_at: None,
            queue_ids: vec!["4ABCDEF".into()],
            sample: None,
        }
    }

    #[test]
    fn one_notification_per_lock_and_a_relock_is_new() {
        let clock = Clock::manual();
        let mut gate = Gate::new(clock.clone());
        let first = event("alice@example.com", &clock);
        assert_eq!(gate.admit(&first, 20), Admission::Send { after_suppressed: 0 });
        assert_eq!(gate.admit(&first, 20), Admission::Duplicate);
        assert_eq!(gate.admit(&first.clone(), 20), Admission::Duplicate);
        // Unlocked, then locked again: a new lock, a new notification.
        clock.advance(Duration::from_secs(60));
        let again = event("alice@example.com", &clock);
        assert_eq!(gate.admit(&again, 20), Admission::Send { after_suppressed: 0 });
        assert_eq!(gate.admit(&again, 20), Admission::Duplicate);
        // Another identity locked at the same moment is another lock.
        assert_eq!(
            gate.admit(&event("bob@example.com", &clock), 20),
            Admission::Send { after_suppressed: 0 }
        );
    }

    #[test]
    fn the_hourly_cap_suppresses_and_reports_how_many() {
        let clock = Clock::manual();
        let mut gate = Gate::new(clock.clone());
        for i in 0..3 {
            let e = event(&format!("u{i}@example.com"), &clock);
            assert_eq!(gate.admit(&e, 3), Admission::Send { after_suppressed: 0 });
            clock.advance(Duration::from_secs(60));
        }
        // 3 sent at 0, 1 and 2 minutes: the next ones are over the cap.
        assert_eq!(
            gate.admit(&event("u3@example.com", &clock), 3),
            Admission::Suppressed { first: true }
        );
        assert_eq!(
            gate.admit(&event("u4@example.com", &clock), 3),
            Admission::Suppressed { first: false }
        );
        assert_eq!(gate.suppressed(), 2);
        // A duplicate of a suppressed lock is still a duplicate, not counted.
        assert_eq!(gate.admit(&event("u4@example.com", &clock), 3), Admission::Duplicate);
        // One hour after the first was sent, one slot is free again.
        clock.advance(Duration::from_secs(3600 - 180));
        assert_eq!(
            gate.admit(&event("u5@example.com", &clock), 3),
            Admission::Send { after_suppressed: 2 }
        );
        assert_eq!(gate.suppressed(), 0);
        assert_eq!(
            gate.admit(&event("u6@example.com", &clock), 3),
            Admission::Suppressed { first: true }
        );
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            gate.admit(&event("u7@example.com", &clock), 3),
            Admission::Send { after_suppressed: 1 }
        );
    }

    #[test]
    fn the_dedupe_memory_is_bounded() {
        let clock = Clock::manual();
        let mut gate = Gate::new(clock.clone());
        for i in 0..DEDUPE_MEMORY + 10 {
            gate.admit(&event(&format!("u{i}@example.com"), &clock), u32::MAX);
            clock.advance(Duration::from_secs(1));
        }
        assert!(gate.seen.len() <= DEDUPE_MEMORY);
    }

    /// The header lines of a composed message, unfolded, and its body.
    fn split(text: &str) -> (Vec<String>, &str) {
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        (unfolded.split("\r\n").map(str::to_string).collect(), body)
    }

    #[test]
    fn the_report_has_the_headers_and_the_facts() {
        let clock = Clock::manual();
        let mut e = event("alice@example.com", &clock);
        e.locked_at = Timestamp(UNIX_EPOCH + Duration::from_secs(1_795_442_820));
        e.expires_at = Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_795_529_220)));
        e.queue_ids = vec!["4ABCDEF".into(), "5BCDEF0".into()];
        let to = vec!["postmaster@example.com".to_string(), "abuse@example.com".to_string()];
        let now = UNIX_EPOCH + Duration::from_secs(1_795_442_821);
        let r = compose_report(&e, "egress@mx1.example.com", &to, "mx1.example.com", now).unwrap();
        let (headers, body) = split(&r.text);
        assert_eq!(
            headers,
            [
                "Date: Mon, 23 Nov 2026 14:07:01 +0000",
                "From: egress-milter <egress@mx1.example.com>",
                "To: postmaster@example.com, abuse@example.com",
                "Subject: egress-milter locked alice@example.com: rule lock-messages",
                &format!("Message-ID: {}", r.message_id),
                "Auto-Submitted: auto-generated",
                "MIME-Version: 1.0",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 7bit",
            ]
        );
        assert!(r.message_id.starts_with("<egress-milter.1795442821.") && r.message_id.ends_with("@mx1.example.com>"));
        for expected in [
            "Identity:   alice@example.com (from auth)\r\n",
            "Rule:       lock-messages: 6/6 messages per identity in 1h\r\n",
            "Reason:     rule \"lock-messages\" exceeded: 6/6",
            "Locked at:  2026-11-23T14:07:00Z\r\n",
            "Expires:    2026-11-24T14:07:00Z (the lock lifts itself then)\r\n",
            "Queue ids:  4ABCDEF 5BCDEF0\r\n",
            "    egress-milter locks show alice@example.com\r\n",
            "    egress-milter locks remove alice@example.com\r\n",
        ] {
            assert!(body.contains(expected), "{expected:?} not in\n{body}");
        }
        assert!(!body.replace("\r\n", "").contains('\n'), "bare LF in the body");
        // Two reports never share a Message-ID.
        let again = compose_report(&e, "egress@mx1.example.com", &to, "mx1.example.com", now).unwrap();
        assert_ne!(again.message_id, r.message_id);
    }

    #[test]
    fn odd_identities_cannot_break_the_headers() {
        let clock = Clock::manual();
        let e = event("jörg@exämple.com\r\nBcc: victim@example.net", &clock);
        let r = compose_report(
            &e,
            "egress@example.com",
            &["pm@example.com".into()],
            "mx1",
            SystemTime::now(),
        )
        .unwrap();
        let (head, _) = r.text.split_once("\r\n\r\n").unwrap();
        assert!(!head.contains("\nBcc:"), "{head}");
        assert!(r.text.is_ascii(), "encoded 7-bit clean");
        let parsed = mail_parser::MessageParser::default().parse(r.text.as_bytes()).unwrap();
        assert_eq!(
            parsed.subject(),
            Some("egress-milter locked jörg@exämple.com??Bcc: victim@example.net: rule lock-messages")
        );
        assert!(parsed.header("Bcc").is_none());
        let body = parsed.body_text(0).unwrap();
        assert!(
            body.contains("Identity:   jörg@exämple.com??Bcc: victim@example.net (from auth)"),
            "{body}"
        );
    }

    /// A lock tripped at MAIL FROM with the last accepted message as sample.
    fn arf_event(clock: &Clock) -> LockEvent {
        let mut e = event("alice@example.com", clock);
        e.locked_at = Timestamp(UNIX_EPOCH + Duration::from_secs(1_795_442_820));
        let mut sample = Sample::new(
            b"<alice@example.com>",
            Some("192.0.2.7".parse().unwrap()),
            UNIX_EPOCH + Duration::from_secs(1_795_442_700),
        );
        sample.queue_id = Some("4ABCDE0".into());
        sample.recipient(b"<victim@example.net>");
        sample.recipient(b"<other@example.org>");
        sample.header(b"From", b"Alice <alice@example.com>");
        sample.header(b"To", b"victim@example.net,\n\tother@example.org");
        sample.header(b"Subject", b"You won a prize");
        sample.header(b"Message-ID", b"<spam.1@example.com>");
        e.sample = Some(Arc::new(sample));
        e
    }

    #[test]
    fn the_arf_report_is_rfc5965() {
        let clock = Clock::manual();
        let e = arf_event(&clock);
        let to = vec!["abuse@example.net".to_string()];
        let now = UNIX_EPOCH + Duration::from_secs(1_795_442_821);
        let r = compose_arf(&e, "egress@mx1.example.com", &to, "mx1.example.com", now).unwrap();
        assert!(r.text.is_ascii());
        let msg = mail_parser::MessageParser::default().parse(r.text.as_bytes()).unwrap();
        assert_eq!(
            msg.from().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("egress@mx1.example.com")
        );
        assert_eq!(
            msg.to().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("abuse@example.net")
        );
        assert_eq!(msg.message_id(), Some(r.message_id.trim_matches(['<', '>'])));
        assert_eq!(
            msg.subject(),
            Some("Abuse report: alice@example.com locked by egress-milter on mx1.example.com")
        );
        assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
        // multipart/report; report-type=feedback-report, three parts in order.
        let ct = msg.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("feedback-report"));
        let root = &msg.parts[0];
        let mail_parser::PartType::Multipart(children) = &root.body else {
            panic!("not multipart: {:?}", root.body);
        };
        let parts: Vec<&mail_parser::MessagePart> = children.iter().map(|&i| &msg.parts[i as usize]).collect();
        let types: Vec<(String, String)> = parts
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                (ct.ctype().to_string(), ct.subtype().unwrap_or("").to_string())
            })
            .collect();
        assert_eq!(
            types,
            [
                ("text".to_string(), "plain".to_string()),
                ("message".to_string(), "feedback-report".to_string()),
                ("text".to_string(), "rfc822-headers".to_string()),
            ]
        );
        // 1. For people: what was locked, why, the counts.
        let human = parts[0].text_contents().unwrap();
        for expected in [
            "Identity:   alice@example.com (from auth)",
            "Rule:       lock-messages: 6/6 messages per identity in 1h",
            "Reason:     rule \"lock-messages\" exceeded",
            "Locked at:  2026-11-23T14:07:00Z",
            "message 4ABCDE0 of alice@example.com",
        ] {
            assert!(human.contains(expected), "{expected:?} not in\n{human}");
        }
        // 2. The feedback report fields (RFC 5965 section 3.1, 3.2).
        let fields = String::from_utf8(parts[1].contents().to_vec()).unwrap();
        let fields: Vec<(String, String)> = fields
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        let field = |name: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(field("Feedback-Type"), ["abuse"]);
        assert_eq!(field("User-Agent"), [USER_AGENT]);
        assert!(USER_AGENT.starts_with("egress-milter/"));
        assert_eq!(field("Version"), ["1"]);
        assert_eq!(field("Original-Mail-From"), ["<alice@example.com>"]);
        assert_eq!(
            field("Original-Rcpt-To"),
            ["<victim@example.net>", "<other@example.org>"]
        );
        assert_eq!(field("Arrival-Date"), ["Mon, 23 Nov 2026 14:05:00 +0000"]);
        assert_eq!(field("Reporting-MTA"), ["dns; mx1.example.com"]);
        assert_eq!(field("Source-IP"), ["192.0.2.7"]);
        assert_eq!(
            field("Authentication-Results"),
            ["mx1.example.com; auth=pass smtp.auth=alice@example.com"]
        );
        assert_eq!(field("Incidents"), ["6"]);
        assert_eq!(field("Reported-Domain"), ["example.com"]);
        // The required fields come first, each once (section 3.1).
        assert_eq!(fields[0].0, "Feedback-Type");
        // 3. The sample's headers, as the MTA passed them.
        let sample = parts[2].text_contents().unwrap();
        let headers = mail_parser::MessageParser::default()
            .parse_headers(sample.as_bytes())
            .unwrap();
        assert_eq!(headers.subject(), Some("You won a prize"));
        assert_eq!(headers.message_id(), Some("spam.1@example.com"));
        assert_eq!(headers.to().map(|t| t.iter().count()), Some(2));
        assert!(
            sample.contains("To: victim@example.net,\r\n\tother@example.org\r\n"),
            "{sample:?}"
        );
        // Parts 2 and 3 are sent as they are, not encoded.
        for p in &parts[1..] {
            assert_eq!(p.content_transfer_encoding(), Some("7bit"));
        }
    }

    #[test]
    fn an_arf_report_without_a_sample_says_so() {
        let clock = Clock::manual();
        let mut e = event("bob@example.com", &clock);
        e.identity_source = "envelope-from".into();
        e.sample = Some(Arc::new(Sample::new(b"<bob@example.com>", None, SystemTime::now())));
        let r = compose_arf(
            &e,
            "egress@mx1",
            &["abuse@example.net".into()],
            "mx1",
            SystemTime::now(),
        )
        .unwrap();
        let msg = mail_parser::MessageParser::default().parse(r.text.as_bytes()).unwrap();
        let text = msg
            .parts
            .iter()
            .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
            .collect::<String>();
        assert!(text.contains("Feedback-Type: abuse"));
        assert!(text.contains("Original-Mail-From: <bob@example.com>"));
        assert!(!text.contains("Source-IP:"), "no client address known");
        assert!(!text.contains("Authentication-Results:"), "not an authenticated login");
        assert!(text.contains("X-Egress-Milter-Note: no header of a message of bob@example.com was seen"));
        assert!(text.contains("No message of bob@example.com reached its headers"));
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 01:02:03 +0000");
    }

    #[test]
    fn the_command_environment_names_everything() {
        let clock = Clock::manual();
        let e = event("alice@example.com", &clock);
        let env: HashMap<_, _> = command_env(&e, "mx1").into_iter().collect();
        assert_eq!(env["EGRESS_IDENTITY"], "alice@example.com");
        assert_eq!(env["EGRESS_SOURCE"], "auto");
        assert_eq!(env["EGRESS_COUNT"], "6");
        assert_eq!(env["EGRESS_WINDOW"], "1h");
        assert_eq!(env["EGRESS_EXPIRES_AT"], "");
        assert_eq!(env["EGRESS_QUEUE_IDS"], "4ABCDEF");
        assert_eq!(env["EGRESS_HOSTNAME"], "mx1");
    }

    #[tokio::test]
    async fn the_worker_counts_what_became_of_each_lock() {
        let clock = Clock::manual();
        let text = r#"
[notify]
command = ["/bin/sh", "-c", "case $EGRESS_IDENTITY in ok@*) exit 0;; slow@*) sleep 30;; *) exit 1;; esac"]
command_timeout = "1s"
max_per_hour = 3
"#;
        let config = Arc::new(Config::parse(text, std::path::Path::new("t.toml")).unwrap());
        let (notifier, queue) = Notifier::channel(16);
        let ok = event("ok@example.com", &clock);
        notifier.notify(ok.clone());
        notifier.notify(ok);
        for id in ["bad@example.com", "slow@example.com", "over@example.com"] {
            notifier.notify(event(id, &clock));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run(queue, move || config.clone(), clock, async {
            let _ = stopped.await;
        }));
        // Stopping finishes what is queued and waits for the commands.
        stop.send(()).unwrap();
        worker.await.unwrap();
        let stats = notifier.stats();
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(count(&stats.commands_ok), 1);
        assert_eq!(count(&stats.commands_failed), 1);
        assert_eq!(count(&stats.commands_killed), 1);
        assert_eq!(count(&stats.duplicates), 1);
        assert_eq!(count(&stats.suppressed), 1);
        assert_eq!(count(&stats.dropped), 0);
        assert_eq!(count(&stats.reports_sent) + count(&stats.reports_failed), 0);
    }

    /// An SMTP server on 127.0.0.1 that takes every message; the messages.
    async fn accept_all() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 sink\r\n").await;
                    let (mut data, mut in_data) = (String::new(), false);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let reply: &[u8] = if in_data {
                            if line != ".\r\n" {
                                data.push_str(&line);
                                continue;
                            }
                            in_data = false;
                            kept.lock().unwrap().push(std::mem::take(&mut data));
                            b"250 queued\r\n"
                        } else if line.starts_with("DATA") {
                            in_data = true;
                            b"354 go\r\n"
                        } else if line.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = w.write_all(reply).await;
                    }
                });
            }
        });
        (addr, got)
    }

    #[tokio::test]
    async fn arf_reports_are_deduplicated_and_capped_with_the_rest() {
        let clock = Clock::manual();
        let (relay, got) = accept_all().await;
        let text = format!(
            "[notify]\narf_to = [\"abuse@example.net\"]\narf_from = \"egress@mx1.example.com\"\n\
             smtp_relay = \"{relay}\"\nmax_per_hour = 2\nhostname = \"mx1.example.com\"\n"
        );
        let config = Arc::new(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
        let (notifier, queue) = Notifier::channel(16);
        let first = arf_event(&clock);
        notifier.notify(first.clone());
        notifier.notify(first);
        for id in ["u2@example.com", "u3@example.com", "u4@example.com"] {
            notifier.notify(event(id, &clock));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run(queue, move || config.clone(), clock, async {
            let _ = stopped.await;
        }));
        stop.send(()).unwrap();
        worker.await.unwrap();
        let stats = notifier.stats();
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(count(&stats.arf_sent), 2);
        assert_eq!(count(&stats.arf_failed), 0);
        assert_eq!(count(&stats.duplicates), 1);
        assert_eq!(count(&stats.suppressed), 2);
        assert_eq!(
            count(&stats.reports_sent) + count(&stats.commands_ok),
            0,
            "only ARF configured"
        );
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m.contains("report-type=feedback-report")));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let clock = Clock::manual();
        let (notifier, mut rx) = Notifier::channel(2);
        for i in 0..5 {
            notifier.notify(event(&format!("u{i}@example.com"), &clock));
        }
        assert_eq!(notifier.dropped(), 3);
        assert_eq!(rx.rx.recv().await.unwrap().identity, "u0@example.com");
    }
}
