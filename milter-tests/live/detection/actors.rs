// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The senders the benchmark plays itself over SMTP: people with their mail
//! clients, a newsletter's software, and the attackers; and the local users
//! that run Postfix's sendmail instead ([`DriverActor::local_user`]). Each is a
//! [`DriverActor`]: one or more sessions, each a list of planned messages
//! with the real-time gap before each, played [`Timeline::factor`] times
//! faster. A gap runs from the start of the previous message, so a machine
//! that falls behind stretches a sender's schedule instead of bunching its
//! messages into a burst it never sent; the report shows the stretch.
//!
//! Every message carries `X-Bench-Actor: STYLE`, so that what reaches the
//! sink is counted per style (egress-milter never looks at that header).

use crate::smtp::{
    Envelope, Reply, SendOutcome, SmtpClient, build_message, open_session, send_message, send_transaction,
};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The header that names the style of every message of the benchmark.
pub const ACTOR_HEADER: &str = "X-Bench-Actor";
/// The date of every message (Postfix adds none then).
const DATE: &str = "Mon, 23 Nov 2026 12:00:00 +0000";
/// Longest a sleeping actor waits before checking whether to stop.
const NAP: Duration = Duration::from_millis(50);

/// Real time played faster: `factor` real seconds in each second.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub start: Instant,
    pub factor: u32,
    /// Real time after which nobody starts another message.
    pub horizon: Duration,
}

impl Timeline {
    /// The wall-clock duration of `real` on this timeline.
    pub fn physical(&self, real: Duration) -> Duration {
        real / self.factor
    }

    /// The real time `physical` stands for.
    pub fn real(&self, physical: Duration) -> Duration {
        physical * self.factor
    }

    /// Real time from the start to `at`.
    pub fn real_at(&self, at: Instant) -> Duration {
        self.real(at.saturating_duration_since(self.start))
    }

    /// Real time now.
    pub fn now(&self) -> Duration {
        self.real_at(Instant::now())
    }

    /// Whether the horizon has passed.
    pub fn over(&self) -> bool {
        self.now() >= self.horizon
    }

    /// Sleeps until `at` (the wall clock), waking every [`NAP`] to see
    /// whether `stop` is set; false if it was.
    pub fn sleep_until(&self, at: Instant, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= at {
                return true;
            }
            thread::sleep((at - now).min(NAP));
        }
    }
}

/// One message of a plan.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Real time from the start of the previous message of the session (of
    /// the actor's start, for the first).
    pub gap: Duration,
    /// Envelope sender (empty: the null sender).
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The `From:` header.
    pub from_header: String,
    /// The `To:` header (a list's name for a BCC mailing).
    pub to_header: String,
    pub subject: String,
    /// Connect from this address.
    pub source: Ipv4Addr,
    /// More headers, such as the identity header of a relayed message.
    pub extra_headers: Vec<(String, String)>,
}

impl Planned {
    /// A message from `sender` (envelope and `From:`) to `rcpts`, from
    /// `source`, `gap` after the previous one.
    pub fn new(gap: Duration, sender: &str, rcpts: Vec<String>, subject: String, source: Ipv4Addr) -> Planned {
        Planned {
            gap,
            mail_from: sender.to_string(),
            to_header: rcpts.join(", "),
            rcpts,
            from_header: format!("<{sender}>"),
            subject,
            source,
            extra_headers: Vec::new(),
        }
    }

    /// Whether one of its recipients exists at the sink.
    pub fn deliverable(&self) -> bool {
        let unknown = crate::sink::UnknownUsers::default();
        self.rcpts.iter().any(|r| !unknown.contains(r))
    }

    /// The content, with the style's header.
    fn content(&self, style: &str, serial: usize) -> String {
        let message_id = format!("<{style}.{serial}.{}@bench.test>", std::process::id());
        let mut headers: Vec<(&str, &str)> = vec![
            ("From", &self.from_header),
            ("To", &self.to_header),
            ("Subject", &self.subject),
            ("Date", DATE),
            ("Message-ID", &message_id),
            (ACTOR_HEADER, style),
        ];
        headers.extend(self.extra_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        build_message(&headers, &format!("{}\n\n-- \n{style}\n", self.subject))
    }
}

/// How a session reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// A connection (with EHLO and AUTH) per message, as a mail client.
    PerMessage,
    /// Messages over one connection, a new one every `per_connection`.
    Reused { per_connection: usize },
}

/// A sender played over SMTP.
#[derive(Clone, Debug)]
pub struct DriverActor {
    /// The style's name, in the table and in [`ACTOR_HEADER`].
    pub style: String,
    /// SASL login and password, if it authenticates.
    pub auth: Option<(String, String)>,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// Real time from the benchmark's start to the actor's first message.
    pub start: Duration,
    /// Parallel sessions, each its plan.
    pub sessions: Vec<Vec<Planned>>,
    pub connections: Connections,
    /// An attacker gives up on a session once it is told it is locked.
    pub stop_when_locked: bool,
    /// Instead of SMTP, this Unix user runs Postfix's sendmail command for
    /// each message (a PHP script's `mail()`, a cron job), through the
    /// local door (pickup, `non_smtpd_milters`); `auth`, `port`, `source`
    /// and `connections` are then unused. Sendmail takes every message (it
    /// exits 0 once the message is in the maildrop): what egress-milter
    /// decided is in its log, what got out at the sink.
    pub local_user: Option<String>,
}

impl DriverActor {
    pub fn planned(&self) -> usize {
        self.sessions.iter().map(Vec::len).sum()
    }
}

/// What one message attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 250 at the end of DATA.
    Accepted,
    /// 4xx: a throttle (or another temporary refusal).
    Throttled(String),
    /// 5xx other than the locked reply.
    Refused(String),
    /// The locked reply (`... is suspended ...`).
    Locked,
    /// The conversation failed (connection refused or lost, timeout).
    Failed(String),
}

/// One attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub at: Instant,
    pub outcome: Outcome,
    /// Whether a recipient of the message exists (is not stale): an
    /// accepted message then reaches the sink.
    pub deliverable: bool,
    /// Recipients refused with 4xx / 5xx in a message that was accepted.
    pub recipients_throttled: usize,
    pub recipients_refused: usize,
}

/// Everything a driver actor was told.
#[derive(Clone, Debug, Default)]
pub struct DriverLog {
    pub attempts: Vec<Attempt>,
}

impl DriverLog {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.attempts.iter().filter(|a| f(&a.outcome)).count()
    }

    pub fn first(&self) -> Option<Instant> {
        self.attempts.iter().map(|a| a.at).min()
    }

    pub fn last(&self) -> Option<Instant> {
        self.attempts.iter().map(|a| a.at).max()
    }

    /// The distinct replies that refused something, with how often (for
    /// the report's notes).
    pub fn refusal_texts(&self) -> Vec<(String, usize)> {
        let mut texts: Vec<(String, usize)> = Vec::new();
        for attempt in &self.attempts {
            let text = match &attempt.outcome {
                Outcome::Throttled(t) | Outcome::Refused(t) | Outcome::Failed(t) => t.clone(),
                _ => continue,
            };
            match texts.iter_mut().find(|(t, _)| *t == text) {
                Some((_, n)) => *n += 1,
                None => texts.push((text, 1)),
            }
        }
        texts
    }
}

/// Whether a reply is egress-milter's locked reply (`replies.locked` of the
/// shipped configuration: "Sending as ... is suspended; ...").
pub fn is_locked_reply(reply: &Reply) -> bool {
    reply.code == 550 && reply.text().contains("is suspended")
}

/// Sorts an outcome into an [`Attempt`].
fn classify(at: Instant, deliverable: bool, result: std::io::Result<SendOutcome>) -> Attempt {
    let outcome = match result {
        Err(e) => Outcome::Failed(format!(
            "conversation failed: {}",
            e.to_string().lines().next().unwrap_or("")
        )),
        Ok(outcome) => {
            let (throttled, refused) =
                outcome
                    .rcpt_to
                    .iter()
                    .filter(|(_, r)| !r.is_positive())
                    .fold(
                        (0, 0),
                        |(t, p), (_, r)| if r.is_transient() { (t + 1, p) } else { (t, p + 1) },
                    );
            let kind = match outcome.refusal() {
                None if outcome.accepted() => Outcome::Accepted,
                None => Outcome::Failed("no final reply".into()),
                Some(reply) if is_locked_reply(reply) => Outcome::Locked,
                Some(reply) if reply.is_transient() => Outcome::Throttled(reply.to_string()),
                Some(reply) => Outcome::Refused(reply.to_string()),
            };
            let accepted = kind == Outcome::Accepted;
            return Attempt {
                at,
                outcome: kind,
                deliverable,
                recipients_throttled: if accepted { throttled } else { 0 },
                recipients_refused: if accepted { refused } else { 0 },
            };
        }
    };
    Attempt {
        at,
        outcome,
        deliverable,
        recipients_throttled: 0,
        recipients_refused: 0,
    }
}

/// Plays `actor` on `timeline` (every session in a thread of its own) until
/// its plan is done, it is locked (if it stops then), the horizon passes or
/// `stop` is set.
pub fn run_driver(actor: &DriverActor, timeline: &Timeline, stop: &AtomicBool) -> DriverLog {
    let begin = timeline.start + timeline.physical(actor.start);
    let logs: Vec<Vec<Attempt>> = thread::scope(|s| {
        let handles: Vec<_> = actor
            .sessions
            .iter()
            .enumerate()
            .map(|(n, plan)| s.spawn(move || run_session(actor, n, plan, begin, timeline, stop)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a session of {} panicked", actor.style))
            })
            .collect()
    });
    let mut attempts: Vec<Attempt> = logs.into_iter().flatten().collect();
    attempts.sort_by_key(|a| a.at);
    DriverLog { attempts }
}

fn run_session(
    actor: &DriverActor,
    session: usize,
    plan: &[Planned],
    begin: Instant,
    timeline: &Timeline,
    stop: &AtomicBool,
) -> Vec<Attempt> {
    let mut attempts = Vec::with_capacity(plan.len());
    let local_user = actor.local_user.as_deref().map(crate::local_door::user);
    let mut client: Option<SmtpClient> = None;
    let mut on_connection = 0;
    let mut next = begin;
    for (i, message) in plan.iter().enumerate() {
        next += timeline.physical(message.gap);
        if !timeline.sleep_until(next, stop) || timeline.over() {
            break;
        }
        let started = Instant::now();
        // A late start moves the rest of the schedule, never bunches it.
        next = next.max(started);
        let serial = session * 1_000_000 + i;
        if let Some(user) = &local_user {
            let content = message.content(&actor.style, serial);
            let outcome = match crate::local_door::sendmail(user, &message.rcpts, &content) {
                Ok(()) => Outcome::Accepted,
                Err(e) => Outcome::Failed(e),
            };
            attempts.push(Attempt {
                at: started,
                outcome,
                deliverable: message.deliverable(),
                recipients_throttled: 0,
                recipients_refused: 0,
            });
            continue;
        }
        let mut envelope = Envelope::new(actor.port, &message.mail_from, &[])
            .source(message.source)
            .content(&message.content(&actor.style, serial));
        envelope.rcpt_to = message.rcpts.clone();
        if let Some((login, password)) = &actor.auth {
            envelope = envelope.auth(login, password);
        }
        let result = match actor.connections {
            Connections::PerMessage => send_message(&envelope),
            Connections::Reused { per_connection } => {
                if on_connection >= per_connection
                    && let Some(old) = client.take()
                {
                    let _ = old.quit();
                }
                if client.is_none() {
                    on_connection = 0;
                    client = open_session(&envelope).map(Some).unwrap_or_else(|e| {
                        eprintln!("{}: session {session}: cannot open: {e}", actor.style);
                        None
                    });
                }
                on_connection += 1;
                match client.as_mut() {
                    Some(c) => {
                        let result = send_transaction(c, &envelope);
                        if result.is_err() {
                            client = None;
                        }
                        result
                    }
                    None => Err(std::io::Error::other("no session")),
                }
            }
        };
        let attempt = classify(started, message.deliverable(), result);
        let locked = attempt.outcome == Outcome::Locked;
        attempts.push(attempt);
        if locked && actor.stop_when_locked {
            break;
        }
    }
    if let Some(client) = client {
        let _ = client.quit();
    }
    attempts
}
