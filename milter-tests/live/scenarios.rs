// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The live-MTA scenarios: egress-milter (the real binary) wired into a
//! private Postfix exactly as docs/postfix.md says, driven by SMTP clients.
//! Each test asserts on what the clients were told (codes and reply text),
//! what reached the sink, the Postfix queue and the lock list file. The
//! table in docs/testing.md lists what each one checks.

use crate::egress::{EgressMilter, MilterConfig, poll_until};
use crate::harness::{LiveMta, skip_unless_live};
use crate::postfix::{PostfixOptions, QueueEntry, TRUSTED_UPSTREAM, UNTRUSTED_CLIENT};
use crate::sink::ReceivedMessage;
use crate::smtp::{Envelope, Reply, SendOutcome, Stage, build_message, open_session, send_message, send_transaction};
use egress_milter::config::{Action, Config, Counted, Scope};
use egress_milter::locks::file::LockSource;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for anything Postfix or the daemon does here (each takes
/// milliseconds).
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The SASL users of every instance (logins; the password is [`password`]).
const USERS: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "carol@example.org",
    "mallory@example.com",
    "trudy@example.net",
    "blaster@example.com",
];

/// A fixed Date header, so that Postfix adds no header of its own besides
/// its Received line and the content can be compared byte for byte.
const DATE: &str = "Mon, 23 Nov 2026 12:00:00 +0000";

pub(crate) fn password(login: &str) -> String {
    format!("secret-{login}")
}

/// egress-milter and a private Postfix that uses it. Fields drop in order:
/// Postfix (and its sink) stop first, then the daemon.
pub(crate) struct Live {
    pub(crate) mta: LiveMta,
    pub(crate) milter: EgressMilter,
}

impl Live {
    /// Starts egress-milter with `config`, then Postfix wired to it.
    pub(crate) fn start(config: MilterConfig) -> Live {
        Self::start_with(config, |o| o)
    }

    /// Like [`Self::start`], with more Postfix settings.
    pub(crate) fn start_with(config: MilterConfig, configure: impl FnOnce(PostfixOptions) -> PostfixOptions) -> Live {
        let milter = EgressMilter::start(&config);
        let mta = start_postfix(&milter, configure);
        Live { mta, milter }
    }

    /// A message from `login`, authenticated as `login`, on the submission
    /// port.
    pub(crate) fn submission(&self, login: &str, rcpts: &[&str], subject: &str) -> Envelope {
        Envelope::new(self.mta.postfix.submission_port(), login, rcpts)
            .auth(login, &password(login))
            .content(&message(login, rcpts, subject, &[]))
    }

    /// A message on the relay port from `source`, carrying
    /// `X-Authenticated-Sender: header_identity` when given.
    pub(crate) fn relayed(
        &self,
        source: Ipv4Addr,
        from: &str,
        rcpts: &[&str],
        subject: &str,
        header: Option<&str>,
    ) -> Envelope {
        relayed(self.mta.postfix.relay_port(), source, from, rcpts, subject, header)
    }

    /// Sends one message (a session of its own); panics only if the SMTP
    /// conversation itself fails.
    pub(crate) fn send(&self, envelope: &Envelope) -> SendOutcome {
        send_message(envelope).unwrap_or_else(|e| {
            panic!(
                "SMTP conversation failed: {e}\n--- maillog ---\n{}",
                self.mta.postfix.log_tail(20)
            )
        })
    }

    /// Sends `n` messages from `login`, subjects `PREFIX-1`..; their outcomes.
    /// Each to a recipient of its own: each a new message (a client's
    /// retry of a deferred envelope is not counted as a new attempt).
    pub(crate) fn submit_many(&self, login: &str, prefix: &str, n: usize) -> Vec<SendOutcome> {
        (1..=n)
            .map(|i| {
                let rcpt = format!("{prefix}-{i}@remote.test");
                self.send(&self.submission(login, &[&rcpt], &format!("{prefix}-{i}")))
            })
            .collect()
    }

    /// Waits until the sink holds exactly `n` messages and the queue is
    /// empty (everything Postfix accepted was delivered, nothing more).
    pub(crate) fn assert_all_delivered(&self, n: usize) {
        let postfix = &self.mta.postfix;
        assert!(
            self.mta.sink.wait_for_count(n, WAIT),
            "sink got {} of {n} messages\n{}",
            self.mta.sink.count(),
            postfix.log_tail(30)
        );
        assert!(
            postfix.wait_queue_empty(WAIT).expect("postqueue -j"),
            "queue not empty: {:#?}",
            postfix.queue()
        );
        assert_eq!(self.mta.sink.count(), n, "{:#?}", subjects(&self.mta.sink.messages()));
    }

    /// The message at the sink with this subject (exactly one).
    pub(crate) fn delivered(&self, subject: &str) -> ReceivedMessage {
        let found: Vec<_> = self
            .mta
            .sink
            .messages()
            .into_iter()
            .filter(|m| m.header("Subject").as_deref() == Some(subject))
            .collect();
        assert_eq!(found.len(), 1, "messages with subject {subject:?}: {found:#?}");
        found.into_iter().next().expect("one message")
    }

    /// Whether the sink got a message with this subject.
    pub(crate) fn was_delivered(&self, subject: &str) -> bool {
        self.mta
            .sink
            .messages()
            .iter()
            .any(|m| m.header("Subject").as_deref() == Some(subject))
    }
}

/// A message on the relay port `port` from `source`, carrying
/// `X-Authenticated-Sender: header` when given.
pub(crate) fn relayed(
    port: u16,
    source: Ipv4Addr,
    from: &str,
    rcpts: &[&str],
    subject: &str,
    header: Option<&str>,
) -> Envelope {
    let extra: Vec<(&str, &str)> = header.map(|h| ("X-Authenticated-Sender", h)).into_iter().collect();
    Envelope::new(port, from, rcpts)
        .source(source)
        .content(&message(from, rcpts, subject, &extra))
}

/// A Postfix wired to `milter` (conf/postfix/main.cf.milter, socket
/// replaced), with the [`USERS`].
fn start_postfix(milter: &EgressMilter, configure: impl FnOnce(PostfixOptions) -> PostfixOptions) -> LiveMta {
    LiveMta::start(|o| {
        let o = USERS
            .iter()
            .fold(o.milter(&milter.socket()), |o, u| o.user(u, &password(u)));
        configure(o)
    })
}

/// Message content with From, To, Subject, Date, Message-ID, `extra`
/// headers and a small body naming the subject.
pub(crate) fn message(from: &str, rcpts: &[&str], subject: &str, extra: &[(&str, &str)]) -> String {
    let from_header = format!("<{from}>");
    let to = rcpts.join(", ");
    let message_id = format!("<{subject}.{}@client.test>", std::process::id());
    let mut headers = vec![
        ("From", from_header.as_str()),
        ("To", to.as_str()),
        ("Subject", subject),
        ("Date", DATE),
        ("Message-ID", message_id.as_str()),
    ];
    headers.extend_from_slice(extra);
    build_message(&headers, &format!("Body of {subject}.\n"))
}

pub(crate) fn subjects(messages: &[ReceivedMessage]) -> Vec<String> {
    messages.iter().filter_map(|m| m.header("Subject")).collect()
}

#[track_caller]
pub(crate) fn assert_accepted(outcome: &SendOutcome) {
    assert!(outcome.accepted(), "expected acceptance:\n{}", outcome.transcript);
}

/// Asserts where and how a message was refused: the stage, code, enhanced
/// status, and the start of the reply text.
#[track_caller]
pub(crate) fn assert_refused(outcome: &SendOutcome, stage: Stage, code: u16, status: &str, text: &str) {
    let Some(reply) = outcome.refusal() else {
        panic!("accepted, expected {code} {status} {text}...:\n{}", outcome.transcript);
    };
    assert_eq!(
        (outcome.refused_at(), reply.code, reply.enhanced.as_deref()),
        (Some(stage), code, Some(status)),
        "{}",
        outcome.transcript
    );
    assert!(
        reply.text().starts_with(text),
        "reply text {:?} does not start with {text:?}:\n{}",
        reply.text(),
        outcome.transcript
    );
}

/// The daemon logged no refusal, lock or error.
#[track_caller]
fn assert_no_refusals_logged(milter: &EgressMilter) {
    for message in [
        "INFO refused",
        "INFO rejected",
        "INFO recipient refused",
        "identity locked",
        "ERROR",
    ] {
        let lines = milter.log_lines(&[message]);
        assert!(lines.is_empty(), "unexpected in the daemon's log: {lines:#?}");
    }
}

/// The throttling reply of the example configuration, up to "retry in".
pub(crate) fn throttled_text(rule: &str, identity: &str) -> String {
    format!("Rate limit \"{rule}\" exceeded for {identity}, retry in ")
}

/// The locked reply of the example configuration.
pub(crate) fn locked_text(identity: &str) -> String {
    format!("Sending as {identity} is suspended; please contact your postmaster")
}

/// The most messages an identity can have had accepted in `elapsed`, by the
/// configuration's throttling rules: a rule `N/W` lets at most `N` through in
/// any window of `W`, so a span of `elapsed` holds at most `N` per window it
/// touches; with a burst `B` below `N`, also at most `B` and then one per
/// `W/N`. The tightest per-identity message rule that refuses.
pub(crate) fn delivery_bound(config: &Config, elapsed: Duration) -> u64 {
    assert!(config.overrides.is_empty(), "the bound does not account for overrides");
    config
        .rules
        .iter()
        .filter(|r| r.count == Counted::Messages && r.per == Scope::Identity)
        .filter(|r| matches!(r.action, Action::Tempfail | Action::Reject))
        .map(|r| {
            let count = u64::from(r.rate.count.get());
            let windows = (elapsed.as_nanos() / r.rate.window.as_nanos()) as u64 + 1;
            let by_window = count * windows;
            match r.burst.map(|b| u64::from(b.get())).filter(|&b| b < count) {
                Some(burst) => {
                    let interval = r.rate.window.as_nanos().div_ceil(u128::from(count));
                    by_window.min(burst + (elapsed.as_nanos() / interval) as u64)
                }
                None => by_window,
            }
        })
        .min()
        .expect("the configuration has a per-identity message throttle")
}

/// Sends up to 7 messages from `login` until it is locked (the seventh,
/// with the small-limits fixture: 3 accepted, 3 throttled at DATA, then
/// the lock rule trips, also at DATA); returns the outcomes and asserts
/// each step.
pub(crate) fn push_until_locked(live: &Live, login: &str) -> Vec<SendOutcome> {
    let outcomes = live.submit_many(login, &format!("{}-push", login.replace('@', "-at-")), 7);
    for outcome in &outcomes[..3] {
        assert_accepted(outcome);
    }
    for outcome in &outcomes[3..6] {
        assert_refused(
            outcome,
            Stage::Data,
            451,
            "4.7.1",
            &throttled_text("messages-per-hour", login),
        );
    }
    assert_refused(&outcomes[6], Stage::Data, 550, "5.7.1", &locked_text(login));
    outcomes
}

// ---------------------------------------------------------------------------
// 1. Normal users under their limits.

/// Three users send a few messages each, well under the shipped example's
/// limits: every message reaches the sink with its envelope, headers and
/// body intact; nothing is queued, locked or refused.
#[test]
fn normal_users_under_their_limits_get_everything_delivered() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::example());
    let users = ["alice@example.com", "bob@example.com", "carol@example.org"];
    let mut sent = Vec::new();
    for round in 1..=3 {
        for user in users {
            let subject = format!("{}-normal-{round}", user.split('@').next().unwrap_or(user));
            let rcpts: Vec<String> = (1..=round).map(|r| format!("friend{r}@remote.test")).collect();
            let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
            let content = build_message(
                &[
                    ("From", &format!("<{user}>")),
                    ("To", &rcpts.join(", ")),
                    ("Subject", &subject),
                    ("Date", DATE),
                    ("Message-ID", &format!("<{subject}@client.test>")),
                    ("X-Folded", "first part\r\n\tsecond part"),
                ],
                &format!("Hello,\n.a line with a leading dot\n\nround {round} from {user}.\n"),
            );
            let envelope = Envelope::new(live.mta.postfix.submission_port(), user, &rcpts)
                .auth(user, &password(user))
                .content(&content);
            let outcome = live.send(&envelope);
            assert_accepted(&outcome);
            assert_eq!(outcome.accepted_recipients(), rcpts, "{}", outcome.transcript);
            sent.push((envelope, outcome.queue_id().expect("queue id")));
        }
    }
    live.assert_all_delivered(sent.len());

    for (envelope, queue_id) in &sent {
        let subject = envelope
            .content
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .expect("subject");
        let got = live.delivered(subject);
        assert_eq!(got.mail_from, envelope.mail_from);
        assert_eq!(got.rcpt_to, envelope.rcpt_to);
        // Postfix prepends its Received line and changes nothing else.
        let text = got.text();
        assert!(
            text.ends_with(&envelope.content),
            "content changed on the way:\n--- sent ---\n{}\n--- received ---\n{text}",
            envelope.content
        );
        let received = got.header_values("Received");
        assert_eq!(received.len(), 1, "{received:?}");
        assert!(received[0].contains(queue_id.as_str()), "{received:?}");
        assert_eq!(got.header("X-Folded").as_deref(), Some("first part second part"));
    }

    // The daemon counted each message under its SASL login and refused nothing.
    for user in users {
        let accepted = live
            .milter
            .log_lines(&["accepted", &format!("identity={user}"), "source=auth"]);
        assert_eq!(accepted.len(), 3, "{user}: {accepted:#?}");
    }
    assert_no_refusals_logged(&live.milter);
    assert!(live.milter.locks().entries.is_empty(), "{:?}", live.milter.locks());
}

/// The same wiring over a unix socket (`smtpd_milters = unix:/PATH`, the
/// daemon's `socket = "unix:/PATH"`): Postfix's smtpd, running as the
/// `postfix` user, reaches it, and mail from both front doors is counted
/// and delivered.
#[test]
fn normal_mail_through_a_unix_socket_milter_is_delivered() {
    if skip_unless_live() {
        return;
    }
    let milter = EgressMilter::start_unix(&MilterConfig::example());
    let mta = start_postfix(&milter, |o| o);
    let live = Live { mta, milter };
    let socket = live.milter.socket();
    assert!(socket.starts_with("unix:/"), "{socket}");
    assert_eq!(live.mta.postfix.postconf("smtpd_milters").expect("postconf"), socket);

    assert_accepted(&live.send(&live.submission("alice@example.com", &["x@remote.test"], "over-unix-1")));
    assert_accepted(&live.send(&live.relayed(
        TRUSTED_UPSTREAM,
        "list@example.org",
        &["y@remote.test"],
        "over-unix-2",
        Some("carol@example.org"),
    )));
    live.assert_all_delivered(2);
    assert_eq!(
        live.milter
            .log_lines(&["accepted", "identity=alice@example.com", "source=auth"])
            .len(),
        1
    );
    assert_eq!(
        live.milter
            .log_lines(&[
                "accepted",
                "identity=carol@example.org",
                "source=header:x-authenticated-sender"
            ])
            .len(),
        1
    );
    assert!(
        live.milter
            .log_lines(&["egress-milter started", &format!("socket={socket}")])
            .len()
            == 1,
        "{}",
        live.milter.log()
    );
}

// ---------------------------------------------------------------------------
// 2. A hijacked account.

/// Messages the blaster tries to send, over [`BLAST_SESSIONS`] sessions.
const BLAST_MESSAGES: usize = 1000;
/// Parallel SMTP sessions (threads) of the blaster.
const BLAST_SESSIONS: usize = 4;
/// The blaster reconnects after this many transactions, as bots do (and
/// to stay clear of smtpd's per-session error limits).
const BLAST_PER_CONNECTION: usize = 50;
/// Messages each of the two normal users sends meanwhile.
const NORMAL_MESSAGES: usize = 10;

/// One account blasts ~1000 messages over parallel sessions while two
/// others send normally, with the shipped example configuration (throttle
/// 30/1m, lock at 900 attempts an hour). The blaster gets its allowance,
/// then 451 from the throttle, then 550 once locked; no more of its mail
/// gets through than the configuration allows; it lands in the lock list
/// with its reason; the two others get every message delivered.
#[test]
fn hijacked_account_is_throttled_then_locked_while_others_get_through() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::example());
    let config = live.milter.config();
    let blaster = "blaster@example.com";
    let normal = ["alice@example.com", "bob@example.com"];
    let port = live.mta.postfix.submission_port();
    let progress = AtomicUsize::new(0);

    let started = Instant::now();
    let (blasts, normals) = thread::scope(|s| {
        let blasts: Vec<_> = (0..BLAST_SESSIONS)
            .map(|t| {
                let progress = &progress;
                s.spawn(move || blast(port, blaster, t, BLAST_MESSAGES / BLAST_SESSIONS, progress))
            })
            .collect();
        let normals: Vec<_> = normal
            .iter()
            .map(|&user| {
                let progress = &progress;
                let live = &live;
                s.spawn(move || {
                    // Spread over the blast: message k once the blaster has
                    // made k/NORMAL_MESSAGES of its attempts (bounded wait).
                    (0..NORMAL_MESSAGES)
                        .map(|k| {
                            poll_until(WAIT, || {
                                progress.load(Ordering::Relaxed) >= k * BLAST_MESSAGES / NORMAL_MESSAGES
                            });
                            let subject = format!("{}-during-blast-{k}", user.split('@').next().unwrap_or(user));
                            live.send(&live.submission(user, &["friend@remote.test"], &subject))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let blasts: Vec<Vec<SendOutcome>> = blasts.into_iter().map(|h| h.join().expect("blaster thread")).collect();
        let normals: Vec<Vec<SendOutcome>> = normals.into_iter().map(|h| h.join().expect("sender thread")).collect();
        (blasts, normals)
    });
    let elapsed = started.elapsed();

    // The two normal users: every message accepted and delivered.
    for (user, outcomes) in normal.iter().zip(&normals) {
        for outcome in outcomes {
            assert!(outcome.accepted(), "{user} was refused:\n{}", outcome.transcript);
        }
    }

    // The blaster: 2xx, then 4xx from the throttle, then 5xx once locked.
    let all: Vec<&SendOutcome> = blasts.iter().flatten().collect();
    assert_eq!(all.len(), BLAST_MESSAGES);
    let accepted = all.iter().filter(|o| o.accepted()).count() as u64;
    let throttled: Vec<&Reply> = all
        .iter()
        .filter_map(|o| o.refusal())
        .filter(|r| r.is_transient())
        .collect();
    let locked: Vec<&SendOutcome> = all
        .iter()
        .copied()
        .filter(|o| o.refusal().is_some_and(Reply::is_permanent))
        .collect();
    let bound = delivery_bound(&config, elapsed);
    let allowance = delivery_bound(&config, Duration::ZERO);
    println!(
        "blaster: {accepted} accepted (bound {bound} after {elapsed:?}), {} throttled, {} refused as locked",
        throttled.len(),
        locked.len()
    );
    assert!(
        accepted <= bound,
        "{accepted} accepted, the configuration allows {bound}"
    );
    assert!(
        accepted >= allowance,
        "{accepted} accepted, below the allowance of {allowance}"
    );
    assert!(!throttled.is_empty(), "the blaster was never throttled");
    for reply in &throttled {
        assert_eq!((reply.code, reply.enhanced.as_deref()), (451, Some("4.7.1")), "{reply}");
        assert!(
            reply
                .text()
                .starts_with(&throttled_text("messages-per-minute", blaster)),
            "{reply}"
        );
    }
    assert!(!locked.is_empty(), "the blaster was never locked");
    for outcome in &locked {
        // Refused before the message is uploaded: at DATA the attempt that
        // trips the lock (in each session that was at it then), at RCPT all
        // later ones.
        let stage = outcome
            .refused_at()
            .filter(|s| *s == Stage::Data)
            .unwrap_or(Stage::RcptTo);
        assert_refused(outcome, stage, 550, "5.7.1", &locked_text(blaster));
    }
    // Once a session saw the lock, it never got anything else.
    for session in &blasts {
        if let Some(first) = session
            .iter()
            .position(|o| o.refusal().is_some_and(Reply::is_permanent))
        {
            let after: Vec<_> = session[first..]
                .iter()
                .filter(|o| !o.refusal().is_some_and(Reply::is_permanent))
                .collect();
            assert!(after.is_empty(), "accepted or throttled after the lock: {after:#?}");
        }
    }

    // The lock list: the blaster, and only it, locked automatically with
    // the rule that tripped.
    let entry = live
        .milter
        .wait_for_lock(blaster, WAIT)
        .unwrap_or_else(|| panic!("{blaster} not in the lock list:\n{:?}", live.milter.locks()));
    assert_eq!(entry.source, LockSource::Auto);
    assert_eq!(entry.rule.as_deref(), Some("lock-messages"));
    assert!(
        entry.reason.starts_with("rule \"lock-messages\" exceeded: ") && entry.reason.contains("(identity from auth"),
        "{}",
        entry.reason
    );
    assert_eq!(live.milter.locks().entries.len(), 1, "{:?}", live.milter.locks());

    // The sink: every accepted message and nothing else.
    let expected = accepted as usize + normal.len() * NORMAL_MESSAGES;
    live.assert_all_delivered(expected);
    let messages = live.mta.sink.messages();
    let from_blaster = messages.iter().filter(|m| m.mail_from == blaster).count() as u64;
    assert_eq!(from_blaster, accepted);
    for user in normal {
        assert_eq!(
            messages.iter().filter(|m| m.mail_from == user).count(),
            NORMAL_MESSAGES,
            "{user}"
        );
    }
    assert_eq!(
        live.milter
            .log_lines(&["identity locked", &format!("identity={blaster}")])
            .len(),
        1
    );
}

/// One blaster session (thread): `n` messages, reconnecting every
/// [`BLAST_PER_CONNECTION`]; every outcome, in order.
fn blast(port: u16, login: &str, thread: usize, n: usize, progress: &AtomicUsize) -> Vec<SendOutcome> {
    let session =
        || open_session(&Envelope::new(port, login, &[]).auth(login, &password(login))).expect("blaster session");
    let mut outcomes = Vec::with_capacity(n);
    let mut client = session();
    for i in 0..n {
        if i > 0 && i % BLAST_PER_CONNECTION == 0 {
            let _ = client.quit();
            client = session();
        }
        // Each a new message: a repeated envelope would be a client's
        // retry, not a new attempt.
        let rcpt = format!("victim{thread}-{i}@remote.test");
        let envelope = Envelope::new(port, login, &[&rcpt]).content(&format!(
            "From: <{login}>\r\nTo: <{rcpt}>\r\nSubject: blast {thread}-{i}\r\nDate: {DATE}\r\n\r\nBuy now.\r\n"
        ));
        outcomes.push(send_transaction(&mut client, &envelope).expect("blaster transaction"));
        progress.fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.quit();
    outcomes
}

// ---------------------------------------------------------------------------
// 3. The identity header of a trusted upstream MTA.

/// Mail relayed by the trusted upstream MTA (127.0.0.2) is counted per
/// `X-Authenticated-Sender`. The same header from an authenticated client
/// (whose login is not in `identity.header_logins`) or from an untrusted
/// client is not believed: the message counts under the SASL login or the
/// client address.
#[test]
fn identity_header_is_believed_only_from_the_trusted_relay() {
    if skip_unless_live() {
        return;
    }
    // The header goes first: with "auth" first the login would win anyway,
    // and header_logins would decide nothing.
    let config = MilterConfig::example()
        .set(
            "identity.sources",
            vec!["header:X-Authenticated-Sender", "auth", "client-address"],
        )
        .set("identity.trusted_networks", vec!["127.0.0.2/32"])
        // The untrusted client below sends without a login: a web server
        // on this host, say. Only in scope is its mail counted at all.
        .set("scope.networks", vec!["127.0.0.1/32"])
        .set_rule("messages-per-minute", "rate", "2/1h");
    // Mail for inbound.test is accepted from anyone on the relay port (as
    // port 25 accepts mail for its own domains): an untrusted client can
    // then get a forged header past Postfix to the milter.
    let live = Live::start_with(config, |o| {
        o.main_cf("relay_domains = inbound.test")
            .relay_override("smtpd_relay_restrictions=permit_mynetworks,permit_auth_destination,reject")
    });
    let carol = "carol@example.org";
    // The daemon logs the source with the header name lowercased.
    let source = "source=header:x-authenticated-sender";

    // The trusted relay: counted per header identity.
    for i in 1..=2 {
        let outcome = live.send(&live.relayed(
            TRUSTED_UPSTREAM,
            "list@example.org",
            &["x@remote.test"],
            &format!("carol-relayed-{i}"),
            Some(carol),
        ));
        assert_accepted(&outcome);
    }
    let outcome = live.send(&live.relayed(
        TRUSTED_UPSTREAM,
        "list@example.org",
        &["x@remote.test"],
        "carol-relayed-3",
        Some(carol),
    ));
    // Known only from the header: refused after the content, whole message.
    assert_refused(
        &outcome,
        Stage::DataEnd,
        451,
        "4.7.1",
        &throttled_text("messages-per-minute", carol),
    );
    let outcome = live.send(&live.relayed(
        TRUSTED_UPSTREAM,
        "list@example.org",
        &["x@remote.test"],
        "dave-relayed-1",
        Some("Dave@Example.org"),
    ));
    assert_accepted(&outcome);

    // An authenticated client with carol's header: counted as alice.
    let alice = "alice@example.com";
    let forged = |subject: &str| {
        let rcpts = ["x@remote.test"];
        live.submission(alice, &rcpts, subject).content(&message(
            alice,
            &rcpts,
            subject,
            &[("X-Authenticated-Sender", carol)],
        ))
    };
    assert_accepted(&live.send(&forged("alice-forged-1")));
    assert_accepted(&live.send(&forged("alice-forged-2")));
    assert_refused(
        &live.send(&forged("alice-forged-3")),
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-minute", alice),
    );

    // An untrusted client (127.0.0.1) with carol's header: counted under
    // its address.
    for i in 1..=2 {
        let outcome = live.send(&live.relayed(
            UNTRUSTED_CLIENT,
            "someone@elsewhere.test",
            &["user@inbound.test"],
            &format!("untrusted-forged-{i}"),
            Some(carol),
        ));
        assert_accepted(&outcome);
    }
    assert_refused(
        &live.send(&live.relayed(
            UNTRUSTED_CLIENT,
            "someone@elsewhere.test",
            &["user@inbound.test"],
            "untrusted-forged-3",
            Some(carol),
        )),
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-minute", "127.0.0.1"),
    );

    // What the daemon counted, per identity and source.
    let counted = |identity: &str, source: &str| {
        live.milter
            .log_lines(&["accepted", &format!("identity={identity} "), source])
            .len()
    };
    assert_eq!(counted(carol, source), 2);
    assert_eq!(counted("dave@example.org", source), 1);
    assert_eq!(counted(alice, "source=auth"), 2);
    assert_eq!(counted("127.0.0.1", "source=client-address"), 2);
    assert!(live.milter.log_lines(&["accepted", source]).len() == 3);

    // Seven accepted messages delivered, the forged headers left as they were.
    live.assert_all_delivered(7);
    assert_eq!(
        live.delivered("alice-forged-1")
            .header("X-Authenticated-Sender")
            .as_deref(),
        Some(carol)
    );
    assert_eq!(live.delivered("untrusted-forged-2").rcpt_to, ["user@inbound.test"]);
    assert!(!live.was_delivered("carol-relayed-3"));
    assert!(live.milter.locks().entries.is_empty());
}

// ---------------------------------------------------------------------------
// 4. Recipient limits.

/// Each recipient counts: the recipient rule (8 an hour, reject) trips part
/// way through the second message and refuses the recipients beyond it;
/// max_recipients_per_message (5) refuses the extra RCPTs of one message
/// with 550 5.5.3; the message goes to the recipients that were accepted.
#[test]
fn recipients_are_counted_one_by_one_and_capped_per_message() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let alice = "alice@example.com";
    let rcpts =
        |prefix: &str, n: usize| -> Vec<String> { (1..=n).map(|i| format!("{prefix}{i}@remote.test")).collect() };

    // 7 recipients, cap 5: the sixth and seventh are refused.
    let first = rcpts("a", 7);
    let first_refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let outcome = live.send(&live.submission(alice, &first_refs, "recipients-1"));
    assert_accepted(&outcome);
    assert_eq!(outcome.accepted_recipients(), &first_refs[..5]);
    for rcpt in &first_refs[5..] {
        let reply = outcome.rcpt_reply(rcpt).expect("reply");
        assert_eq!(
            (reply.code, reply.enhanced.as_deref(), reply.text()),
            (
                550,
                Some("5.5.3"),
                "Too many recipients: at most 5 per message".to_string()
            ),
            "{}",
            outcome.transcript
        );
    }

    // 5 more: 5 + 3 = 8 fit the hourly recipient rule, the fourth does not.
    let second = rcpts("b", 5);
    let second_refs: Vec<&str> = second.iter().map(String::as_str).collect();
    let outcome = live.send(&live.submission(alice, &second_refs, "recipients-2"));
    assert_accepted(&outcome);
    assert_eq!(outcome.accepted_recipients(), &second_refs[..3]);
    for rcpt in &second_refs[3..] {
        let reply = outcome.rcpt_reply(rcpt).expect("reply");
        assert_eq!((reply.code, reply.enhanced.as_deref()), (550, Some("5.7.1")), "{reply}");
        assert_eq!(
            reply.text(),
            format!("Rate limit \"recipients-per-hour\" exceeded for {alice}")
        );
    }

    // A third message (messages: 3 of 3 an hour, fine) has no recipient left.
    let outcome = live.send(&live.submission(alice, &["c1@remote.test"], "recipients-3"));
    assert_refused(
        &outcome,
        Stage::RcptTo,
        550,
        "5.7.1",
        &format!("Rate limit \"recipients-per-hour\" exceeded for {alice}"),
    );

    // Another user is counted apart.
    let bobs = rcpts("d", 5);
    let bob_refs: Vec<&str> = bobs.iter().map(String::as_str).collect();
    let outcome = live.send(&live.submission("bob@example.com", &bob_refs, "recipients-bob"));
    assert_accepted(&outcome);
    assert_eq!(outcome.accepted_recipients(), bob_refs);

    live.assert_all_delivered(3);
    assert_eq!(live.delivered("recipients-1").rcpt_to, first[..5]);
    assert_eq!(live.delivered("recipients-2").rcpt_to, second[..3]);
    assert_eq!(live.delivered("recipients-bob").rcpt_to, bobs);
    assert_eq!(
        live.milter
            .log_lines(&["recipient refused: too many recipients in one message"])
            .len(),
        2
    );
    assert!(live.milter.locks().entries.is_empty());
}

// ---------------------------------------------------------------------------
// 5. Restarting egress-milter under traffic.

/// Mail keeps flowing (from the trusted relay, each message with its own
/// header identity) while egress-milter is restarted (SIGTERM, start):
/// every message is either accepted and delivered or answered with 4xx
/// (milter_default_action = tempfail while it is down), never lost or
/// refused for good. Postfix reconnects by itself (no reload), and the lock
/// set before the restart is enforced after it, from the lock list.
#[test]
fn restart_under_traffic_keeps_locks_and_postfix_reconnects() {
    if skip_unless_live() {
        return;
    }
    let mut live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let mallory = "mallory@example.com";
    push_until_locked(&live, mallory);
    live.milter
        .wait_for_lock(mallory, WAIT)
        .expect("mallory in the lock list");
    let master_pid = live.mta.postfix.master_pid();
    // What mallory got through may still be on its way to the sink: count
    // it once Postfix's queue is empty, or the total below is one short.
    assert!(
        live.mta.postfix.wait_queue_empty(WAIT).expect("postqueue -j"),
        "queue not empty: {:#?}",
        live.mta.postfix.queue()
    );
    let delivered_before = live.mta.sink.count();

    let stop = AtomicBool::new(false);
    let outcomes: Mutex<Vec<(Instant, SendOutcome)>> = Mutex::new(Vec::new());
    let relay_port = live.mta.postfix.relay_port();
    let accepted_since = |since: Instant| {
        outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|(at, o)| *at >= since && o.accepted())
            .count()
    };
    thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let envelope = relayed(
                    relay_port,
                    TRUSTED_UPSTREAM,
                    "list@example.net",
                    &["reader@remote.test"],
                    &format!("traffic-{n}"),
                    Some(&format!("user{n}@example.net")),
                );
                let sent_at = Instant::now();
                let outcome = send_message(&envelope).expect("SMTP conversation");
                outcomes.lock().expect("outcomes").push((sent_at, outcome));
            }
        });
        // Stops the traffic also if an assertion below panics (the scope
        // would otherwise wait for the thread forever).
        let _stop = StopOnDrop(&stop);
        let begin = Instant::now();
        let flowing = poll_until(WAIT, || accepted_since(begin) >= 3);
        // SIGTERM, wait for the exit, start again on the same port.
        live.milter.restart();
        let restarted_at = Instant::now();
        let after = flowing && poll_until(WAIT, || accepted_since(restarted_at) >= 3);
        stop.store(true, Ordering::Relaxed);
        traffic.join().expect("traffic thread");
        assert!(flowing, "no traffic got through before the restart");
        assert!(after, "no traffic got through after the restart");
    });

    let outcomes = outcomes.into_inner().expect("outcomes");
    let mut accepted = 0;
    let mut deferred = 0;
    for (_, outcome) in &outcomes {
        if outcome.accepted() {
            accepted += 1;
        } else {
            let reply = outcome.refusal().expect("a refusal");
            assert!(reply.is_transient(), "refused for good:\n{}", outcome.transcript);
            deferred += 1;
        }
    }
    println!("traffic during the restart: {accepted} accepted, {deferred} answered 4xx");
    live.assert_all_delivered(delivered_before + accepted);
    for (_, outcome) in outcomes.iter().filter(|(_, o)| o.accepted()) {
        let id = outcome.queue_id().expect("queue id");
        assert!(
            live.mta
                .sink
                .messages()
                .iter()
                .any(|m| m.header_values("Received").iter().any(|r| r.contains(&id))),
            "{id} not delivered"
        );
    }

    // The lock outlived the restart; Postfix was neither restarted nor reloaded.
    let since_restart = live.milter.log_since_start();
    assert!(since_restart.contains("egress-milter started"), "{since_restart}");
    let outcome = live.send(&live.submission(mallory, &["x@remote.test"], "mallory-after-restart"));
    assert_refused(&outcome, Stage::RcptTo, 550, "5.7.1", &locked_text(mallory));
    assert!(
        live.milter.log_since_start().contains("refused: identity is locked"),
        "{}",
        live.milter.log_since_start()
    );
    assert_eq!(live.mta.postfix.master_pid(), master_pid);
    assert!(!live.mta.postfix.log().contains("reload -- version"));
    assert_eq!(live.milter.locks().entries.len(), 1);
}

/// The memory backend's counters outlive a clean restart: an account sends
/// its three messages an hour through Postfix, egress-milter is stopped
/// with SIGTERM (which saves the counters) and started again, and its next
/// message is still refused with 451 at MAIL FROM, for the rest of the
/// hour, instead of finding a fresh quota. Another account keeps what it
/// had left (two of three), and nothing was locked.
#[test]
fn memory_counters_survive_a_restart() {
    if skip_unless_live() {
        return;
    }
    let mut live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let (alice, bob) = ("alice@example.com", "bob@example.com");
    live.submit_many(alice, "before-restart", 3)
        .iter()
        .for_each(assert_accepted);
    assert_accepted(&live.send(&live.submission(bob, &["rcpt@remote.test"], "bob-before-restart")));

    live.milter.restart();
    assert!(
        live.milter.log().contains("counters saved"),
        "{}",
        live.milter.log_tail(20)
    );
    // Three rules count each of the two accounts.
    let started = live.milter.log_since_start();
    let restored = started
        .lines()
        .find(|l| l.contains("counters restored"))
        .unwrap_or_else(|| panic!("no restore logged:\n{started}"));
    assert!(restored.contains("buckets=6"), "{restored}");

    let outcome = live.send(&live.submission(alice, &["rcpt@remote.test"], "alice-after-restart"));
    assert_refused(
        &outcome,
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", alice),
    );
    let outcomes = live.submit_many(bob, "bob-after-restart", 3);
    outcomes[..2].iter().for_each(assert_accepted);
    assert_refused(
        &outcomes[2],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", bob),
    );
    live.assert_all_delivered(3 + 1 + 2);
    assert!(!live.was_delivered("alice-after-restart"));
    assert!(live.milter.locks().entries.is_empty());
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// 6. Unlocking while the daemon runs.

/// Two accounts are locked by traffic. `egress-milter locks remove` frees
/// one, a hand edit of the lock file frees the other; each is picked up by
/// the running daemon within its poll_interval (no restart, no SIGHUP) and
/// the account's next message is delivered, while the other stays locked.
#[test]
fn unlocking_by_cli_or_hand_edit_resumes_delivery_without_restart() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let pid = live.milter.pid();
    let (mallory, trudy) = ("mallory@example.com", "trudy@example.net");
    push_until_locked(&live, mallory);
    push_until_locked(&live, trudy);
    for who in [mallory, trudy] {
        live.milter.wait_for_lock(who, WAIT).expect("in the lock list");
    }
    let listed = live.milter.cli(&["locks", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(mallory) && listed.contains(trudy), "{listed}");

    // The CLI.
    let out = live.milter.cli(&["locks", "remove", mallory]);
    assert!(
        out.status.success(),
        "locks remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        live.milter
            .wait_for_log(&["lock list reloaded", &format!("removed={mallory}")], WAIT),
        "the daemon did not pick up the removal:\n{}",
        live.milter.log_tail(20)
    );
    assert_accepted(&live.send(&live.submission(mallory, &["x@remote.test"], "mallory-unlocked")));
    assert_refused(
        &live.send(&live.submission(trudy, &["x@remote.test"], "trudy-still-locked")),
        Stage::RcptTo,
        550,
        "5.7.1",
        &locked_text(trudy),
    );

    // A hand edit: the admin deletes trudy's [[lock]] table in an editor.
    let text = std::fs::read_to_string(live.milter.lock_file()).expect("read the lock list");
    let edited = remove_lock_table(&text, trudy);
    assert_ne!(edited, text, "no [[lock]] table for {trudy} in:\n{text}");
    std::fs::write(live.milter.lock_file(), &edited).expect("write the lock list");
    assert!(
        live.milter
            .wait_for_log(&["lock list reloaded", &format!("removed={trudy}")], WAIT),
        "the daemon did not pick up the edit:\n{}",
        live.milter.log_tail(20)
    );
    assert_accepted(&live.send(&live.submission(trudy, &["x@remote.test"], "trudy-unlocked")));

    // Each pushed 3 accepted before the lock, then one after the unlock.
    live.assert_all_delivered(8);
    assert!(live.was_delivered("mallory-unlocked") && live.was_delivered("trudy-unlocked"));
    assert!(live.milter.locks().entries.is_empty(), "{:?}", live.milter.locks());
    assert_eq!(live.milter.pid(), pid, "the daemon was restarted");
    assert_eq!(live.milter.log_lines(&["egress-milter started"]).len(), 1);
    assert!(!live.milter.log().contains("SIGHUP"));
    let listed = live.milter.cli(&["locks", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("no locks in "));
}

/// `text` without the `[[lock]]` table whose identity is `identity`, as an
/// admin would delete it in an editor.
fn remove_lock_table(text: &str, identity: &str) -> String {
    let mut parts = text.split("[[lock]]");
    let mut out = parts.next().unwrap_or("").to_string();
    for table in parts {
        if !table.contains(&format!("identity = \"{identity}\"")) {
            out.push_str("[[lock]]");
            out.push_str(table);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 7. locked_action = "hold".

/// With `locked_action = "hold"`, the locked account's mail is accepted
/// (250) into Postfix's hold queue instead of being refused: nothing is
/// delivered and nothing is lost; `postsuper -H` releases it to the sink.
#[test]
fn hold_puts_a_locked_accounts_mail_on_hold_until_released() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml").set("locks.locked_action", "hold"));
    let postfix = &live.mta.postfix;
    let mallory = "mallory@example.com";
    let outcomes = live.submit_many(mallory, "hold", 9);
    for outcome in &outcomes[..3] {
        assert_accepted(outcome);
    }
    for outcome in &outcomes[3..6] {
        assert_refused(
            outcome,
            Stage::Data,
            451,
            "4.7.1",
            &throttled_text("messages-per-hour", mallory),
        );
    }
    // The seventh attempt trips the lock rule: it and what follows is held.
    let held_ids: Vec<String> = outcomes[6..]
        .iter()
        .map(|o| {
            assert_accepted(o);
            o.queue_id().expect("queue id")
        })
        .collect();
    let entry = live.milter.wait_for_lock(mallory, WAIT).expect("mallory locked");
    assert_eq!(entry.rule.as_deref(), Some("lock-messages"));

    let queue = postfix
        .wait_for_queue(WAIT, |q| q.len() == 3 && q.iter().all(|e| e.queue_name == "hold"))
        .expect("postqueue -j")
        .unwrap_or_else(|| {
            panic!(
                "not 3 messages on hold: {:#?}\n{}",
                postfix.queue(),
                postfix.log_tail(20)
            )
        });
    let mut queued: Vec<&str> = queue.iter().map(|e: &QueueEntry| e.queue_id.as_str()).collect();
    queued.sort_unstable();
    let mut expected: Vec<&str> = held_ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(queued, expected);
    for entry in &queue {
        assert_eq!(entry.sender, mallory);
        assert_eq!(entry.recipients.len(), 1);
    }
    assert!(live.mta.sink.wait_for_count(3, WAIT));
    assert_eq!(
        subjects(&live.mta.sink.messages()).len(),
        3,
        "only the first three are delivered"
    );
    for id in &held_ids {
        assert!(
            postfix.log().contains(&format!("{id}: milter-hold: END-OF-MESSAGE")),
            "{id} not held by the milter:\n{}",
            postfix.log_tail(30)
        );
    }
    assert_eq!(
        live.milter
            .log_lines(&["held: identity is locked", &format!("identity={mallory}")])
            .len(),
        3
    );

    // Release one by its queue ID, then the rest.
    postfix
        .run("postsuper", &["-H", &held_ids[0]])
        .expect("postsuper -H ID");
    postfix.flush().expect("postqueue -f");
    assert!(live.mta.sink.wait_for_count(4, WAIT), "{}", postfix.log_tail(20));
    assert!(live.was_delivered("hold-7"));
    assert_eq!(postfix.queue_named("hold").expect("postqueue -j").len(), 2);
    postfix.release_hold().expect("postsuper -H ALL");
    live.assert_all_delivered(6);
    for i in [1, 2, 3, 7, 8, 9] {
        assert!(live.was_delivered(&format!("hold-{i}")), "hold-{i}");
    }
}

// ---------------------------------------------------------------------------
// 8. The milter is down.

/// With milter_default_action = tempfail (conf/postfix/main.cf.milter),
/// mail is answered with 4xx while egress-milter is not running, and when
/// it dies in the middle of a transaction: nothing is delivered and nothing
/// is queued. Once it runs again, the client's retry is delivered.
#[test]
fn milter_down_means_tempfail_and_nothing_is_lost() {
    if skip_unless_live() {
        return;
    }
    let mut milter = EgressMilter::prepare(&MilterConfig::example());
    let mta = start_postfix(&milter, |o| o);
    let postfix = &mta.postfix;
    assert_eq!(postfix.postconf("milter_default_action").expect("postconf"), "tempfail");
    let alice = "alice@example.com";
    let envelope = |subject: &str| {
        let rcpts = ["x@remote.test"];
        Envelope::new(postfix.submission_port(), alice, &rcpts)
            .auth(alice, &password(alice))
            .content(&message(alice, &rcpts, subject, &[]))
    };

    // Not running at all: smtpd cannot connect to it when the client
    // connects, and answers every later command with 4xx (Postfix 3.7
    // refuses AUTH with "454 4.3.0 Try again later", MAIL with "451 4.7.1").
    let first = envelope("while-down");
    let outcome = send_message(&first).expect("SMTP conversation");
    let reply = outcome
        .refusal()
        .unwrap_or_else(|| panic!("accepted without the milter:\n{}", outcome.transcript));
    assert!(reply.is_transient(), "{}", outcome.transcript);
    assert!(
        matches!(outcome.refused_at(), Some(Stage::Auth | Stage::MailFrom)),
        "{}",
        outcome.transcript
    );
    // Without AUTH (the relay port), at MAIL FROM.
    let relay = relayed(
        postfix.relay_port(),
        TRUSTED_UPSTREAM,
        "list@example.org",
        &["x@remote.test"],
        "relayed-while-down",
        None,
    );
    let outcome = send_message(&relay).expect("SMTP conversation");
    assert_refused(
        &outcome,
        Stage::MailFrom,
        451,
        "4.7.1",
        "Service unavailable - try again later",
    );
    assert!(postfix.queue().expect("postqueue -j").is_empty());
    assert!(
        postfix.log().contains(&format!("127.0.0.1:{}", milter.port())),
        "{}",
        postfix.log_tail(20)
    );

    // Started: the client's retry goes through.
    milter.launch().expect("start egress-milter");
    assert_accepted(&send_message(&first).expect("SMTP conversation"));
    assert!(mta.sink.wait_for_count(1, WAIT));

    // Killed between MAIL FROM and RCPT TO of an open session.
    let second = envelope("killed-midway");
    let mut client = open_session(&second).expect("session");
    let mail = client.mail_from(alice).expect("MAIL FROM");
    assert_eq!(mail.code, 250, "{}", client.transcript());
    milter.kill();
    let rcpt = client.rcpt_to("x@remote.test").expect("RCPT TO");
    assert_eq!(
        (rcpt.code, rcpt.enhanced.as_deref()),
        (451, Some("4.7.1")),
        "{}",
        client.transcript()
    );
    let _ = client.quit();
    assert!(postfix.queue().expect("postqueue -j").is_empty());

    milter.launch().expect("restart egress-milter");
    assert_accepted(&send_message(&second).expect("SMTP conversation"));
    assert_accepted(&send_message(&relay).expect("SMTP conversation"));
    assert!(mta.sink.wait_for_count(3, WAIT));
    assert!(postfix.wait_queue_empty(WAIT).expect("postqueue -j"));
    let mut got = subjects(&mta.sink.messages());
    got.sort_unstable();
    assert_eq!(got, ["killed-midway", "relayed-while-down", "while-down"]);
}

// ---------------------------------------------------------------------------
// 9. Dry run.

/// In dry-run mode nothing is refused or locked, however far over the
/// limits: every message is delivered, the log says what would have been
/// done ("would tempfail/reject/lock [dry run, not done]") and the lock
/// list stays empty.
#[test]
fn dry_run_refuses_nothing_and_logs_what_it_would_do() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml").set("mode", "dry-run"));
    let mallory = "mallory@example.com";
    // Over messages-per-hour (3) at the fourth and over lock-messages (6) at
    // the seventh.
    for outcome in live.submit_many(mallory, "dry", 10) {
        assert_accepted(&outcome);
    }
    // Over recipients-per-hour (8) at the ninth recipient.
    for i in 1..=3 {
        let rcpts = ["r1@remote.test", "r2@remote.test", "r3@remote.test", "r4@remote.test"];
        let outcome = live.send(&live.submission("bob@example.com", &rcpts, &format!("dry-bob-{i}")));
        assert_accepted(&outcome);
        assert_eq!(outcome.accepted_recipients(), rcpts);
    }
    live.assert_all_delivered(13);

    for (action, rule, identity) in [
        ("tempfail", "messages-per-hour", mallory),
        ("lock", "lock-messages", mallory),
        ("reject", "recipients-per-hour", "bob@example.com"),
    ] {
        let lines = live.milter.log_lines(&[
            &format!("limit exceeded, would {action} [dry run, not done]"),
            &format!("rule={rule}"),
            &format!("identity={identity}"),
        ]);
        assert!(
            !lines.is_empty(),
            "no dry-run line for {action}:\n{}",
            live.milter.log()
        );
    }
    assert_no_refusals_logged(&live.milter);
    assert!(live.milter.locks().entries.is_empty(), "{:?}", live.milter.locks());
    let listed = live.milter.cli(&["locks", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("no locks in "));
}

/// Dry-run refuses nothing, the per-message recipient cap included: the
/// extra RCPTs are logged as "would refuse".
#[test]
fn dry_run_does_not_cap_recipients_per_message() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml").set("mode", "dry-run"));
    let rcpts: Vec<String> = (1..=7).map(|i| format!("r{i}@remote.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let outcome = live.send(&live.submission("alice@example.com", &rcpts, "dry-cap"));
    assert_accepted(&outcome);
    assert_eq!(outcome.accepted_recipients(), rcpts, "{}", outcome.transcript);
    live.assert_all_delivered(1);
    assert_eq!(live.delivered("dry-cap").rcpt_to.len(), 7);
    let log = live.milter.log();
    assert!(
        log.contains("too many recipients in one message, would refuse [dry run, not done]"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// 10. SIGHUP.

/// SIGHUP after raising a limit in the file: the new limit applies to new
/// sessions. SIGHUP after breaking the file: the daemon says why, keeps the
/// configuration it runs, and the limit in force stays the raised one.
#[test]
fn sighup_applies_a_changed_limit_and_keeps_the_old_one_when_broken() {
    if skip_unless_live() {
        return;
    }
    let config = MilterConfig::fixture("small-limits.toml");
    let live = Live::start(config.clone());
    let pid = live.milter.pid();
    let alice = "alice@example.com";

    // The limit at start: 3 messages an hour.
    let outcomes = live.submit_many(alice, "hup-alice", 4);
    outcomes[..3].iter().for_each(assert_accepted);
    assert_refused(
        &outcomes[3],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", alice),
    );

    // Raised to 5 and reloaded.
    let raised = config.set_rule("messages-per-hour", "rate", "5/1h");
    live.milter.write_config(&raised.to_toml());
    live.milter.sighup();
    assert!(
        live.milter.wait_for_log(&["configuration reloaded"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    let bob = "bob@example.com";
    let outcomes = live.submit_many(bob, "hup-bob", 6);
    outcomes[..5].iter().for_each(assert_accepted);
    assert_refused(
        &outcomes[5],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", bob),
    );

    // Broken: an invalid rate. Not reloaded; 5 an hour still applies.
    let broken = raised.set_rule("messages-per-hour", "rate", "lots");
    live.milter.write_config(&broken.to_toml());
    live.milter.sighup();
    assert!(
        live.milter
            .wait_for_log(&["configuration not reloaded, keeping the running one"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    let complaint = live.milter.log_lines(&["configuration not reloaded"]).join("\n");
    assert!(
        complaint.contains(&live.milter.config_path().display().to_string())
            && complaint.contains("line ")
            && complaint.contains("invalid rate \"lots\""),
        "{complaint}"
    );
    let carol = "carol@example.org";
    let outcomes = live.submit_many(carol, "hup-carol", 6);
    outcomes[..5].iter().for_each(assert_accepted);
    assert_refused(
        &outcomes[5],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", carol),
    );

    live.assert_all_delivered(13);
    assert_eq!(live.milter.pid(), pid);
    assert_eq!(live.milter.log_lines(&["configuration reloaded"]).len(), 1);
}

/// The emergency runbook's first command (docs/operations.md, "Take
/// egress-milter out of the mail path"): with it, Postfix stops asking the
/// milter at once and a locked account's mail flows; putting the line back
/// puts the milter back. Run as the runbook says, against this instance.
#[test]
fn the_runbook_takes_the_milter_out_of_the_mail_path_in_one_command() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start(MilterConfig::fixture("small-limits.toml"));
    let mallory = "mallory@example.com";
    push_until_locked(&live, mallory);
    live.milter.wait_for_lock(mallory, WAIT).expect("in the lock list");
    let postfix = &live.mta.postfix;
    let milters = postfix.postconf("smtpd_milters").expect("postconf smtpd_milters");
    assert!(!milters.trim().is_empty(), "the instance has a milter to take out");

    // postconf -e 'smtpd_milters =' 'non_smtpd_milters =' && postfix reload
    postfix
        .run("postconf", &["-e", "smtpd_milters =", "non_smtpd_milters ="])
        .expect("postconf -e");
    postfix.reload().expect("postfix reload");
    let delivered = (0..50)
        .map(|i| format!("runbook-out-{i}"))
        .find(|subject| {
            let out = live.send(&live.submission(mallory, &["x@remote.test"], subject));
            if !out.accepted() {
                // smtpd processes started before the reload finish their
                // session with the old settings; a new one has the new.
                std::thread::sleep(Duration::from_millis(100));
            }
            out.accepted()
        })
        .expect("with the milter out of the path, the locked account's mail is accepted");
    assert!(
        crate::egress::poll_until(WAIT, || live.was_delivered(&delivered)),
        "{delivered} accepted but not delivered"
    );

    // Back: the milter's lines restored, and the lock holds again.
    postfix
        .run("postconf", &["-e", &format!("smtpd_milters = {}", milters.trim())])
        .expect("postconf -e");
    postfix.reload().expect("postfix reload");
    let refused = (0..50)
        .map(|i| live.send(&live.submission(mallory, &["x@remote.test"], &format!("runbook-back-{i}"))))
        .inspect(|out| {
            if out.accepted() {
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .find(|out| !out.accepted())
        .expect("with the milter back, the lock holds again");
    assert_refused(&refused, Stage::RcptTo, 550, "5.7.1", &locked_text(mallory));
}
