// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The live-MTA scenarios with Sendmail: egress-milter (the real binary)
//! wired into a private Sendmail with the lines of
//! conf/sendmail/egress-milter.mc, as docs/sendmail.md tells admins, and
//! driven by SMTP clients that authenticate (AUTH PLAIN), so that the
//! identity is the SASL login Sendmail passes as `{auth_authen}`. Each test
//! asserts on what the clients were told, what reached the sink, Sendmail's
//! queue and the lock list file.

use crate::egress::{EgressMilter, MilterConfig};
use crate::harness::skip_unless_live;
use crate::sendmail::{SendmailMta, SendmailOptions};
use crate::smtp::{Envelope, Reply, SendOutcome, Stage, build_message, send_message};
use egress_milter::config::{Action, Config};
use egress_milter::locks::file::LockSource;
use std::time::Duration;

/// Upper bound for anything Sendmail or the daemon does here (each takes
/// milliseconds).
const WAIT: Duration = Duration::from_secs(30);

/// The SASL users of every instance (logins; the password is [`password`]).
const USERS: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "mallory@example.com",
    "eve@example.com",
];

fn password(login: &str) -> String {
    format!("secret-{login}")
}

/// egress-milter and a private Sendmail that uses it. Fields drop in order:
/// Sendmail (and its sink) stop first, then the daemon.
struct Live {
    mta: SendmailMta,
    milter: EgressMilter,
}

impl Live {
    /// Starts Sendmail, with every user of [`USERS`], wired to `milter`
    /// (already running).
    fn with(milter: EgressMilter) -> Live {
        Self::with_options(milter, |o| o)
    }

    /// Like [`Self::with`], with more Sendmail settings.
    fn with_options(milter: EgressMilter, configure: impl FnOnce(SendmailOptions) -> SendmailOptions) -> Live {
        let port = milter.port();
        let mta = SendmailMta::start(|o| {
            let o = USERS
                .iter()
                .fold(o.milter_port(port), |o, login| o.user(login, &password(login)));
            configure(o)
        });
        Live { mta, milter }
    }

    /// Sends one message as the SASL user `login`, from `mail_from`, to
    /// `rcpt`; panics if the conversation itself fails.
    fn send(&self, login: &str, mail_from: &str, rcpt: &str) -> SendOutcome {
        let content = build_message(
            &[
                ("From", &format!("<{mail_from}>")),
                ("To", &format!("<{rcpt}>")),
                ("Subject", &format!("from {login}")),
            ],
            "Hello.\n",
        );
        send_message(
            &Envelope::new(self.mta.sendmail.port(), mail_from, &[rcpt])
                .auth(login, &password(login))
                .content(&content),
        )
        .unwrap_or_else(|e| panic!("SMTP conversation with Sendmail as {login}: {e}"))
    }

    /// Waits (bounded) until Sendmail's queue directory holds no control file.
    fn sendmail_wait_queue_empty(&self) -> bool {
        self.mta
            .sendmail
            .wait_queue_empty(WAIT)
            .expect("read the queue directory")
    }

    /// Waits until the sink holds `n` messages; panics with the transcript
    /// when it does not.
    fn expect_delivered(&self, n: usize) {
        assert!(
            self.mta.sink.wait_for_count(n, WAIT),
            "the sink got {} of {n} messages\n{}",
            self.mta.sink.count(),
            self.mta.sendmail.traffic_tail(40)
        );
    }
}

/// The queue ID in Sendmail's `250 2.0.0 6ANB2k3x012345 Message accepted
/// for delivery`.
fn sendmail_queue_id(outcome: &SendOutcome) -> String {
    let reply = outcome.data_end.as_ref().expect("a reply to the end of DATA");
    let text = reply.text();
    let id = text
        .split_whitespace()
        .find(|w| w.len() >= 12 && w.chars().all(|c| c.is_ascii_alphanumeric()));
    id.unwrap_or_else(|| panic!("no queue ID in {reply}")).to_string()
}

/// How many messages rule `name` lets through at once (its burst, by
/// default its count), from the configuration the daemon runs with.
fn allowance(config: &Config, name: &str) -> u32 {
    let rule = config
        .rules
        .iter()
        .find(|r| r.name.get_ref() == name)
        .unwrap_or_else(|| panic!("no rule {name}"));
    rule.burst.unwrap_or(rule.rate.count).get()
}

fn assert_reply(reply: Option<&Reply>, code: u16, enhanced: &str, needles: &[&str], transcript: &str) {
    let reply = reply.unwrap_or_else(|| panic!("no refusal:\n{transcript}"));
    assert_eq!(
        (reply.code, reply.enhanced.as_deref()),
        (code, Some(enhanced)),
        "{reply}\n{transcript}"
    );
    for needle in needles {
        assert!(reply.text().contains(needle), "{needle:?} not in {reply}");
    }
}

/// A per-minute throttle: the allowance goes through Sendmail to the sink,
/// the next message gets the milter's 451 4.7.1 at MAIL FROM. The reply
/// names the SASL login although the envelope sender is another address:
/// the identity came from `{auth_authen}`. Another login is not affected.
#[test]
fn sendmail_rate_limit_tempfails_after_the_allowance() {
    if skip_unless_live() {
        return;
    }
    let live = Live::with(EgressMilter::start(&MilterConfig::fixture("sendmail-throttle.toml")));
    let config = live.milter.config();
    let allowed = allowance(&config, "messages-per-minute");
    assert_eq!(
        config
            .rules
            .iter()
            .find(|r| r.name.get_ref() == "messages-per-minute")
            .map(|r| r.action),
        Some(Action::Tempfail)
    );

    for i in 1..=allowed {
        let outcome = live.send("alice@example.com", "news@example.org", "r1@remote.test");
        assert!(outcome.accepted(), "message {i} of {allowed}:\n{}", outcome.transcript);
        assert_eq!(
            outcome.auth.as_ref().map(|r| r.code),
            Some(235),
            "{}",
            outcome.transcript
        );
    }
    let outcome = live.send("alice@example.com", "news@example.org", "r1@remote.test");
    assert_eq!(outcome.refused_at(), Some(Stage::Data), "{}", outcome.transcript);
    assert_reply(
        outcome.refusal(),
        451,
        "4.7.1",
        &["messages-per-minute", "alice@example.com"],
        &outcome.transcript,
    );
    // Refused again while the window lasts.
    let again = live.send("alice@example.com", "alice@example.com", "r2@remote.test");
    assert_eq!(again.refusal().map(|r| r.code), Some(451), "{}", again.transcript);

    // Another login has an allowance of its own.
    let bob = live.send("bob@example.com", "bob@example.com", "r3@remote.test");
    assert!(bob.accepted(), "{}", bob.transcript);

    live.expect_delivered(allowed as usize + 1);
    let messages = live.mta.sink.messages();
    assert_eq!(messages.len(), allowed as usize + 1, "{messages:#?}");
    let from_alice = messages.iter().filter(|m| m.mail_from == "news@example.org").count();
    assert_eq!(from_alice, allowed as usize);
    assert!(messages.iter().any(|m| m.mail_from == "bob@example.com"));
    // Sendmail's trace header records the authenticated submission.
    let received = messages[0].header_values("Received");
    assert!(
        received
            .iter()
            .any(|r| r.contains("(authenticated") || r.contains("with ESMTPA")),
        "{received:?}"
    );
    assert!(
        live.sendmail_wait_queue_empty(),
        "queue not empty: {:?}",
        live.mta.sendmail.queue_files()
    );
}

/// The escalation: throttled at the per-minute allowance, and an account
/// that keeps pushing is locked when the lock rule (counting every attempt)
/// is exceeded. The lock lands in the lock list with its reason; from then
/// on the identity gets 5xx, except for postmaster at its own domain.
#[test]
fn sendmail_lock_after_repeated_attempts() {
    if skip_unless_live() {
        return;
    }
    let live = Live::with(EgressMilter::start(&MilterConfig::fixture("sendmail-lock.toml")));
    let config = live.milter.config();
    let throttle = allowance(&config, "messages-per-minute");
    let lock_at = allowance(&config, "lock-attempts") + 1;
    assert!(throttle < lock_at, "the fixture must throttle before it locks");

    let login = "mallory@example.com";
    for attempt in 1..lock_at {
        // A new message each time (a retry of a deferred one is no new
        // attempt).
        let outcome = live.send(login, login, &format!("victim{attempt}@remote.test"));
        if attempt <= throttle {
            assert!(outcome.accepted(), "attempt {attempt}:\n{}", outcome.transcript);
        } else {
            assert_eq!(outcome.refused_at(), Some(Stage::Data), "{}", outcome.transcript);
            assert_reply(
                outcome.refusal(),
                451,
                "4.7.1",
                &["messages-per-minute", login],
                &outcome.transcript,
            );
        }
        assert!(
            live.milter.locks().get(login).is_none(),
            "locked early, at attempt {attempt}"
        );
    }

    // The attempt that exceeds the lock rule is refused for good.
    let outcome = live.send(login, login, &format!("victim{lock_at}@remote.test"));
    let refusal = outcome
        .refusal()
        .unwrap_or_else(|| panic!("attempt {lock_at} accepted:\n{}", outcome.transcript));
    assert_eq!(refusal.code / 100, 5, "{refusal}\n{}", outcome.transcript);

    let entry = live
        .milter
        .wait_for_lock(login, WAIT)
        .unwrap_or_else(|| panic!("{login} not in the lock list:\n{}", live.milter.log_tail(20)));
    assert_eq!(entry.source, LockSource::Auto);
    assert_eq!(entry.rule.as_deref(), Some("lock-attempts"));
    assert!(entry.reason.contains("lock-attempts"), "reason: {}", entry.reason);
    let listed = live.milter.cli(&["locks", "show", login]);
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && listed_text.contains(&entry.reason),
        "locks show: {listed_text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // Locked: 550 for the outside world, at RCPT (postmaster stays open).
    let outcome = live.send(login, login, "victim@remote.test");
    assert_eq!(outcome.refused_at(), Some(Stage::RcptTo), "{}", outcome.transcript);
    assert_reply(outcome.refusal(), 550, "5.7.1", &[login], &outcome.transcript);
    let support = live.send(login, login, "postmaster@example.com");
    assert!(support.accepted(), "{}", support.transcript);
    // Others are not affected.
    let bob = live.send("bob@example.com", "bob@example.com", "friend@remote.test");
    assert!(bob.accepted(), "{}", bob.transcript);

    live.expect_delivered(throttle as usize + 2);
    let messages = live.mta.sink.messages();
    assert_eq!(messages.len(), throttle as usize + 2, "{messages:#?}");
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.rcpt_to.len() == 1 && m.rcpt_to[0].starts_with("victim"))
            .count(),
        throttle as usize
    );
}

/// An identity already in the lock list (put there by an admin with
/// `egress-milter locks add` before the daemon starts) is refused on its
/// very first message, with the configured 550 reply; postmaster at its own
/// domain is still reachable; other identities are not affected.
#[test]
fn sendmail_locked_identity_is_refused_at_once() {
    if skip_unless_live() {
        return;
    }
    let mut milter = EgressMilter::prepare(&MilterConfig::fixture("sendmail-locked.toml"));
    let login = "eve@example.com";
    let added = milter.cli(&["locks", "add", login, "--reason", "phished on 2026-11-23, ticket 4711"]);
    assert!(
        added.status.success(),
        "locks add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    milter
        .launch()
        .unwrap_or_else(|e| panic!("egress-milter did not start: {e}"));
    let entry = milter.locks().get(login).cloned().expect("the lock added by hand");
    assert_eq!(entry.source, LockSource::Manual);
    let live = Live::with(milter);

    let outcome = live.send(login, login, "r@remote.test");
    assert_eq!(outcome.refused_at(), Some(Stage::RcptTo), "{}", outcome.transcript);
    assert_reply(
        outcome.refusal(),
        550,
        "5.7.1",
        &[login, "suspended"],
        &outcome.transcript,
    );
    // Also when the client claims another envelope sender.
    let disguised = live.send(login, "ceo@example.com", "r@remote.test");
    assert_eq!(
        disguised.refusal().map(|r| r.code),
        Some(550),
        "{}",
        disguised.transcript
    );

    let support = live.send(login, login, "postmaster@example.com");
    assert!(support.accepted(), "{}", support.transcript);
    let alice = live.send("alice@example.com", "alice@example.com", "r@remote.test");
    assert!(alice.accepted(), "{}", alice.transcript);

    live.expect_delivered(2);
    let messages = live.mta.sink.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages
            .iter()
            .all(|m| m.rcpt_to == ["postmaster@example.com"] || m.mail_from == "alice@example.com"),
        "{messages:#?}"
    );
    assert!(
        live.milter.wait_for_log(&["identity is locked", login], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
}

/// `F=T` as shipped: with egress-milter down, Sendmail answers 4xx and
/// takes no mail, instead of letting it through unchecked.
#[test]
fn sendmail_milter_down_tempfails() {
    if skip_unless_live() {
        return;
    }
    // A port nobody listens on (the daemon is prepared, never launched).
    let milter = EgressMilter::prepare(&MilterConfig::fixture("sendmail-throttle.toml"));
    let live = Live::with(milter);
    // An authenticating client is refused at AUTH already...
    let outcome = live.send("alice@example.com", "alice@example.com", "r@remote.test");
    assert_eq!(outcome.refused_at(), Some(Stage::Auth), "{}", outcome.transcript);
    assert_reply(outcome.refusal(), 454, "4.3.0", &[], &outcome.transcript);
    // ... one without AUTH at MAIL FROM.
    let plain = send_message(&Envelope::new(
        live.mta.sendmail.port(),
        "alice@example.com",
        &["r@remote.test"],
    ))
    .expect("SMTP conversation");
    assert_eq!(plain.refused_at(), Some(Stage::MailFrom), "{}", plain.transcript);
    assert_reply(plain.refusal(), 451, "4.3.2", &[], &plain.transcript);
    // Refused before DATA: nothing was queued that could still arrive.
    assert_eq!(
        live.mta.sendmail.queue_ids("qf").expect("queue directory"),
        Vec::<String>::new()
    );
    assert_eq!(live.mta.sink.count(), 0);
}

/// `locked_action = "hold"`: the locked identity's messages are accepted
/// (250) and quarantined by the milter. Sendmail keeps them in its queue as
/// hf files with the reason, `mailq -qQ` lists them, queue runs skip them.
/// `sendmail -qQ -qI<ID> -Q` releases one, `sendmail -qQ -Q` all the rest,
/// and the next queue run (`sendmail -q`) delivers them.
#[test]
fn sendmail_hold_quarantines_until_released() {
    if skip_unless_live() {
        return;
    }
    let mut milter = EgressMilter::prepare(&MilterConfig::fixture("sendmail-hold.toml"));
    let login = "eve@example.com";
    let added = milter.cli(&["locks", "add", login, "--reason", "phished, ticket 4712"]);
    assert!(
        added.status.success(),
        "locks add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    milter
        .launch()
        .unwrap_or_else(|e| panic!("egress-milter did not start: {e}"));
    let live = Live::with(milter);
    let sendmail = &live.mta.sendmail;

    let mut ids = Vec::new();
    for rcpt in ["first@remote.test", "second@remote.test"] {
        let outcome = live.send(login, login, rcpt);
        assert!(outcome.accepted(), "{}", outcome.transcript);
        ids.push(sendmail_queue_id(&outcome));
    }
    let queue = sendmail
        .wait_for_queue(WAIT, |files| {
            ids.iter()
                .all(|id| files.iter().any(|f| f.kind == "hf" && &f.queue_id == id))
        })
        .expect("read the queue directory")
        .unwrap_or_else(|| panic!("{ids:?} not quarantined: {:?}", sendmail.queue_files()));
    assert!(!queue.iter().any(|f| f.kind == "qf"), "{queue:?}");
    let listing = sendmail.mailq(&["-qQ"]).expect("mailq -qQ");
    for needle in [
        &ids[0],
        &ids[1],
        "QUARANTINE: egress-milter:",
        login,
        "Total requests: 2",
    ] {
        assert!(listing.contains(needle), "{needle:?} not in\n{listing}");
    }
    let normal = sendmail.mailq(&[]).expect("mailq");
    assert!(
        !normal.contains(&ids[0]),
        "plain mailq lists quarantined mail:\n{normal}"
    );
    // Queue runs leave quarantined mail alone.
    sendmail.run_queue().expect("sendmail -q");
    assert_eq!(live.mta.sink.count(), 0, "a quarantined message was delivered");

    // Release one message by its queue ID.
    sendmail
        .run(&["-qQ", &format!("-qI{}", ids[0]), "-Q"])
        .expect("sendmail -qQ -qI<ID> -Q");
    assert_eq!(sendmail.queue_ids("hf").expect("queue directory"), [ids[1].clone()]);
    sendmail.run_queue().expect("sendmail -q");
    live.expect_delivered(1);
    assert_eq!(live.mta.sink.messages()[0].rcpt_to, ["first@remote.test"]);

    // Release the rest.
    sendmail.run(&["-qQ", "-Q"]).expect("sendmail -qQ -Q");
    sendmail.run_queue().expect("sendmail -q");
    live.expect_delivered(2);
    assert_eq!(live.mta.sink.messages()[1].rcpt_to, ["second@remote.test"]);
    assert!(
        live.sendmail_wait_queue_empty(),
        "queue not empty: {:?}",
        sendmail.queue_files()
    );
}

/// egress-milter also asks for its macros itself when it negotiates
/// (milter protocol 6), and Sendmail (8.14 and later) honours that: with
/// `confMILTER_MACROS_ENVFROM` cut down to `i` after the shipped lines,
/// the identity is still the SASL login.
#[test]
fn sendmail_sends_the_macros_the_milter_asks_for() {
    if skip_unless_live() {
        return;
    }
    let live = Live::with_options(
        EgressMilter::start(&MilterConfig::fixture("sendmail-throttle.toml")),
        |o| o.mc("define(`confMILTER_MACROS_ENVFROM', `i')dnl"),
    );
    let cf = std::fs::read_to_string(live.mta.sendmail.cf_path()).expect("read sendmail.cf");
    assert!(
        cf.lines().any(|l| l == "O Milter.macros.envfrom=i"),
        "the override did not take"
    );
    let allowed = allowance(&live.milter.config(), "messages-per-minute");
    for _ in 0..allowed {
        let outcome = live.send("bob@example.com", "news@example.org", "r@remote.test");
        assert!(outcome.accepted(), "{}", outcome.transcript);
    }
    let outcome = live.send("bob@example.com", "news@example.org", "r@remote.test");
    assert_reply(
        outcome.refusal(),
        451,
        "4.7.1",
        &["messages-per-minute", "bob@example.com"],
        &outcome.transcript,
    );
    assert!(
        live.milter
            .wait_for_log(&["source=auth", "identity=bob@example.com"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
}

/// A Sendmail that cannot start is reported with what it said, promptly,
/// and leaves nothing running.
#[test]
fn sendmail_start_failure_is_reported() {
    if skip_unless_live() {
        return;
    }
    let sink = crate::sink::SmtpSink::start().expect("sink");
    let started = std::time::Instant::now();
    let result = crate::sendmail::SendmailInstance::start(
        SendmailOptions::new(sink.port()).mc("define(`QUEUE_DIR', `/nonexistent/egress-milter-test-queue')dnl"),
    );
    let err = match result {
        Ok(instance) => panic!("a broken sendmail.mc started: {}", instance.output()),
        Err(err) => err.to_string(),
    };
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    assert!(err.contains("/nonexistent/egress-milter-test-queue"), "{err}");
    println!("reported as: {err}");
}
