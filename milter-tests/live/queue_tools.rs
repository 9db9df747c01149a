// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `egress-milter queue hold|release` against a real, private Postfix: the
//! identity's mail already queued is found by envelope sender and by the
//! queue ids the daemon recorded, and put on hold with postsuper.

use crate::WAIT;
use crate::egress::{EgressMilter, MilterConfig};
use crate::harness::{LiveMta, skip_unless_live};
use crate::smtp::{Envelope, send_message};
use std::process::Output;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local addr")
        .port()
}

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

#[test]
fn queue_hold_finds_an_identitys_queued_mail_and_release_gives_it_back() {
    if skip_unless_live() {
        return;
    }
    let status = format!("127.0.0.1:{}", free_port());
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
    // defer_transports keeps relayed mail in the deferred queue.
    let mta = LiveMta::start(|o| {
        o.milter(&daemon.socket())
            .user("alice@example.com", "alice-secret")
            .user("bob@example.com", "bob-secret")
            .main_cf("defer_transports = smtp")
    });
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
        // Authenticated as alice, another envelope sender: found only by
        // the queue id the daemon recorded for alice.
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
