// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `egress-milter queue hold|release` against a real, private Postfix: the
//! identity's mail already queued is found by envelope sender, by the queue
//! ids the daemon recorded and by the SASL login Postfix recorded in each
//! queue file (postcat), and put on hold with postsuper.

use crate::WAIT;
use crate::egress::{EgressMilter, MilterConfig, free_port};
use crate::harness::{LiveMta, skip_unless_live};
use crate::postfix::TRUSTED_UPSTREAM;
use crate::smtp::{Envelope, send_message};
use egress_milter::ops::activity::QUEUE_IDS;
use std::process::Output;
use std::time::{Duration, Instant};

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ids_in(postfix: &crate::postfix::PostfixInstance, queue: &str) -> Vec<String> {
    let mut ids: Vec<String> = postfix
        .queue_named(queue)
        .expect("postqueue")
        .into_iter()
        .map(|e| e.queue_id)
        .collect();
    ids.sort();
    ids
}

/// The daemon with its status listener up (queue hold asks it for the
/// queue ids it recorded).
fn daemon_with_status_listener() -> EgressMilter {
    let status = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let daemon = EgressMilter::start(&MilterConfig::example().set("status.listen", status.as_str()));
    let started = Instant::now();
    while std::net::TcpStream::connect(status.as_str()).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "status listener not up:\n{}",
            daemon.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// The `matched: ...` line of a queue command: (sender, login, queue id).
fn matched_counts(out: &str) -> (usize, usize, usize) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("matched: "))
        .unwrap_or_else(|| panic!("no matched line: {out}"));
    let count = |what: &str| -> usize {
        line.split(", ")
            .find_map(|part| part.strip_suffix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count {what:?} in {line:?}"))
    };
    (
        count(" by envelope sender"),
        count(" by SASL login"),
        count(" by queue id recorded by the daemon"),
    )
}

/// A private Postfix with alice and bob as SASL users, egress-milter wired
/// in, and `defer_transports = smtp` keeping relayed mail in the deferred
/// queue, where `queue hold` finds it.
fn deferring_mta(daemon: &EgressMilter) -> LiveMta {
    LiveMta::start(|o| {
        o.milter(&daemon.socket())
            .user("alice@example.com", "alice-secret")
            .user("bob@example.com", "bob-secret")
            .main_cf("defer_transports = smtp")
    })
}

#[test]
fn queue_hold_finds_an_identitys_queued_mail_and_release_gives_it_back() {
    if skip_unless_live() {
        return;
    }
    let daemon = daemon_with_status_listener();
    let mta = deferring_mta(&daemon);
    let postfix = &mta.postfix;
    let send = |login: &str, password: &str, from: &str| {
        let outcome =
            send_message(&Envelope::new(postfix.submission_port(), from, &["carol@remote.test"]).auth(login, password))
                .expect("submission conversation");
        assert!(outcome.accepted(), "{}\n{}", outcome.transcript, daemon.log_tail(20));
        outcome.queue_id().expect("queue id")
    };
    let mut alice = vec![
        send("alice@example.com", "alice-secret", "alice@example.com"),
        send("alice@example.com", "alice-secret", "Alice@Example.com"),
        // Authenticated as alice, another envelope sender: found by the
        // queue id the daemon recorded for alice (tried before the login).
        send("alice@example.com", "alice-secret", "newsletter@example.net"),
    ];
    let bob = send("bob@example.com", "bob-secret", "bob@example.com");
    alice.sort();
    let queued = postfix
        .wait_for_queue(WAIT, |q| q.len() == 4 && q.iter().all(|e| e.queue_name == "deferred"))
        .expect("postqueue");
    assert!(
        queued.is_some(),
        "mail not deferred: {:?}\n{}",
        postfix.queue(),
        postfix.log_tail(30)
    );

    let config_dir = postfix.config_dir();
    let config_dir = config_dir.to_str().expect("UTF-8 path");
    let dry = stdout_of(
        &daemon.cli(&[
            "queue",
            "hold",
            "alice@example.com",
            "--dry-run",
            "--postfix-config",
            config_dir,
        ]),
        "queue hold --dry-run",
    );
    println!("$ egress-milter queue hold alice@example.com --dry-run\n{dry}");
    assert!(
        dry.starts_with("would have held 3 message(s) of alice@example.com: "),
        "{dry}"
    );
    assert!(ids_in(postfix, "hold").is_empty(), "a dry run held mail");

    let held = stdout_of(
        &daemon.cli(&["queue", "hold", "alice@example.com", "--postfix-config", config_dir]),
        "queue hold",
    );
    println!("$ egress-milter queue hold alice@example.com\n{held}");
    assert!(held.starts_with("held 3 message(s) of alice@example.com: "), "{held}");
    assert_eq!(matched_counts(&held), (2, 0, 1), "{held}");
    for id in &alice {
        assert!(held.contains(id.as_str()), "{id} not named: {held}");
    }
    assert_eq!(ids_in(postfix, "hold"), alice);
    assert_eq!(ids_in(postfix, "deferred"), [bob]);

    // Nothing left to hold; release gives the three back.
    let again = stdout_of(
        &daemon.cli(&["queue", "hold", "alice@example.com", "--postfix-config", config_dir]),
        "queue hold (again)",
    );
    assert!(
        again.starts_with("no queued message of alice@example.com to hold"),
        "{again}"
    );
    let released = stdout_of(
        &daemon.cli(&["queue", "release", "alice@example.com", "--postfix-config", config_dir]),
        "queue release",
    );
    println!("$ egress-milter queue release alice@example.com\n{released}");
    assert!(
        released.starts_with("released 3 message(s) of alice@example.com: "),
        "{released}"
    );
    assert!(ids_in(postfix, "hold").is_empty());
    assert_eq!(ids_in(postfix, "deferred").len(), 4);

    // A wrong instance directory is reported with postqueue's own words.
    let bad = daemon.cli(&["queue", "hold", "alice@example.com", "--postfix-config", "/nonexistent"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("postqueue -j failed"), "{err}");
}

/// The common incident: a hijacked SASL login sends under many envelope
/// senders, more messages than the daemon keeps queue ids for. `queue hold
/// LOGIN` finds them all by the login Postfix recorded in each queue file,
/// and none of the other users' mail, not even under the same senders.
#[test]
fn queue_hold_finds_a_hijacked_logins_mail_under_any_envelope_sender() {
    if skip_unless_live() {
        return;
    }
    let daemon = daemon_with_status_listener();
    let mta = deferring_mta(&daemon);
    let postfix = &mta.postfix;
    let send = |envelope: Envelope| {
        let outcome = send_message(&envelope).expect("SMTP conversation");
        assert!(outcome.accepted(), "{}\n{}", outcome.transcript, daemon.log_tail(20));
        outcome.queue_id().expect("queue id")
    };
    let submit = |login: &str, password: &str, from: &str| {
        send(Envelope::new(postfix.submission_port(), from, &["victim@remote.test"]).auth(login, password))
    };
    let forged = QUEUE_IDS + 4;
    let mut alice: Vec<String> = (0..forged)
        .map(|i| {
            submit(
                "alice@example.com",
                "alice-secret",
                &format!("promo{i}@spam{i}.example.net"),
            )
        })
        .collect();
    let bob = vec![
        submit("bob@example.com", "bob-secret", "bob@example.com"),
        // Another user under one of alice's forged senders: not alice's.
        submit("bob@example.com", "bob-secret", "promo1@spam1.example.net"),
        // Relayed without SASL by the upstream MTA, same sender again.
        send(
            Envelope::new(
                postfix.relay_port(),
                "promo2@spam2.example.net",
                &["victim@remote.test"],
            )
            .source(TRUSTED_UPSTREAM),
        ),
    ];
    alice.sort();
    let mut others = bob.clone();
    others.sort();
    let total = alice.len() + others.len();
    let queued = postfix
        .wait_for_queue(WAIT, |q| {
            q.len() == total && q.iter().all(|e| e.queue_name == "deferred")
        })
        .expect("postqueue");
    assert!(
        queued.is_some(),
        "mail not deferred: {:?}\n{}",
        postfix.queue(),
        postfix.log_tail(30)
    );

    // Postfix records the login as the daemon sees it, in the format the
    // queue command parses.
    let envelope = postfix.run("postcat", &["-e", "-q", &alice[0]]).expect("postcat");
    assert!(
        envelope.contains("\nnamed_attribute: sasl_username=alice@example.com\n"),
        "{envelope}"
    );

    let config_dir = postfix.config_dir();
    let config_dir = config_dir.to_str().expect("UTF-8 path");
    // The identity is compared normalised, as the daemon counts it.
    let dry = stdout_of(
        &daemon.cli(&[
            "queue",
            "hold",
            "Alice@Example.COM",
            "--dry-run",
            "--postfix-config",
            config_dir,
        ]),
        "queue hold --dry-run",
    );
    println!("$ egress-milter queue hold Alice@Example.COM --dry-run\n{dry}");
    assert!(
        dry.starts_with(&format!("would have held {forged} message(s) of Alice@Example.COM: ")),
        "{dry}"
    );
    assert!(ids_in(postfix, "hold").is_empty(), "a dry run held mail");

    let held = stdout_of(
        &daemon.cli(&["queue", "hold", "alice@example.com", "--postfix-config", config_dir]),
        "queue hold",
    );
    println!("$ egress-milter queue hold alice@example.com\n{held}");
    assert!(
        held.starts_with(&format!("held {forged} message(s) of alice@example.com: ")),
        "{held}"
    );
    let (by_sender, by_login, by_queue_id) = matched_counts(&held);
    assert_eq!(by_sender, 0, "{held}");
    assert!(by_queue_id <= QUEUE_IDS, "{held}");
    assert_eq!(by_login + by_queue_id, forged, "{held}");
    assert!(by_login >= forged - QUEUE_IDS, "{held}");
    assert_eq!(ids_in(postfix, "hold"), alice);
    assert_eq!(ids_in(postfix, "deferred"), others);

    let released = stdout_of(
        &daemon.cli(&["queue", "release", "alice@example.com", "--postfix-config", config_dir]),
        "queue release",
    );
    println!("$ egress-milter queue release alice@example.com\n{released}");
    assert!(
        released.starts_with(&format!("released {forged} message(s) of alice@example.com: ")),
        "{released}"
    );
    assert!(ids_in(postfix, "hold").is_empty(), "{released}");
    let mut deferred = ids_in(postfix, "deferred");
    let mut all: Vec<String> = alice.iter().chain(&others).cloned().collect();
    all.sort();
    deferred.sort();
    assert_eq!(deferred, all);
}
