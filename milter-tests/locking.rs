// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Automatic locking, support addresses, hold and dry-run.

use crate::common::*;
use egress_milter::locks::file::LockSource;
use indymilter_test::*;
use std::time::Duration;

/// Three accepted, three throttled, then the seventh attempt locks.
async fn blast(m: &Milter, login: &str) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(Mta::send(m.addr, &Msg::from_user(login)).await);
    }
    outcomes
}

#[tokio::test]
async fn a_blaster_is_throttled_then_locked_and_the_lock_is_written() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let outcomes = blast(&m, "mallory@example.com").await;
    assert!(outcomes[..3].iter().all(Outcome::accepted));
    for o in &outcomes[3..6] {
        assert!(o.refusal().unwrap().starts_with("451 4.7.1"), "{o:?}");
    }
    let locked = "550 5.7.1 Sending as mallory@example.com is suspended; please contact your postmaster";
    for o in &outcomes[6..] {
        assert_eq!(o.refusal().as_deref(), Some(locked), "{o:?}");
    }
    eventually(Duration::from_secs(5), "lock written", async || {
        m.lock_list().get("mallory@example.com").is_some()
    })
    .await;
    let list = m.lock_list();
    let entry = list.get("mallory@example.com").unwrap();
    assert_eq!(entry.source, LockSource::Auto);
    assert_eq!(entry.rule.as_deref(), Some("lock"));
    assert!(
        entry.reason.contains("6/6 messages per identity in 1h"),
        "{}",
        entry.reason
    );
    assert!(entry.expires_at.is_none());
    // The lock holds even when the throttle would have let mail through again.
    m.clock.advance(Duration::from_secs(600));
    assert_eq!(
        Mta::send(m.addr, &Msg::from_user("mallory@example.com"))
            .await
            .refusal()
            .as_deref(),
        Some(locked)
    );
    // Others are unaffected.
    assert!(Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.accepted());
}

#[tokio::test]
async fn a_locked_identity_may_still_write_to_support() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    blast(&m, "mallory@example.com").await;
    let msg = Msg::from_user("mallory@example.com").to(&[
        "friend@example.net",
        "postmaster@example.com",
        "abuse@example.com",
    ]);
    let out = Mta::send(m.addr, &msg).await;
    assert_eq!(out.mail, Some(Status::Continue));
    assert!(matches!(out.rcpts[0], Status::Reject { .. }));
    assert_eq!(&out.rcpts[1..], &[Status::Continue, Status::Continue]);
    assert!(out.accepted(), "the message goes to support only");
    let other_domain = Msg::from_user("mallory@example.com").to(&["postmaster@victim.example"]);
    assert!(!Mta::send(m.addr, &other_domain).await.accepted());
}

#[tokio::test]
async fn hold_puts_a_locked_identitys_mail_in_quarantine() {
    let m = Milter::spawn(&fixture("hold.toml")).await;
    let outcomes = blast(&m, "mallory@example.com").await;
    assert!(outcomes[..3].iter().all(|o| o.accepted() && !o.held()));
    assert!(outcomes[3..6].iter().all(|o| !o.accepted()));
    // The attempt that trips the lock and every later one are held, not refused.
    for o in &outcomes[6..] {
        assert!(o.accepted() && o.held(), "{o:?}");
    }
    let actions = outcomes[7].actions.as_ref().unwrap();
    let reason = actions.actions.iter().find_map(|a| match a {
        EomAction::Quarantine { reason } => Some(reason.to_string_lossy().into_owned()),
        _ => None,
    });
    let reason = reason.expect("a quarantine action");
    assert!(
        reason.starts_with("egress-milter: mallory@example.com is locked (rule \"lock\" exceeded"),
        "{reason}"
    );
}

#[tokio::test]
async fn dry_run_refuses_nothing_and_locks_nothing() {
    let m = Milter::spawn(&fixture("dry-run.toml")).await;
    for o in blast(&m, "mallory@example.com").await {
        assert!(o.accepted() && !o.held(), "{o:?}");
    }
    // Past max_recipients_per_message (5 here): logged, not refused.
    let out = Mta::send(m.addr, &Msg::from_user("mallory@example.com").rcpts(8)).await;
    assert!(
        out.accepted() && out.rcpts.iter().all(|s| *s == Status::Continue),
        "{out:?}"
    );
    let dir = m.shutdown().await;
    assert!(
        !dir.path().join("locks.toml").exists() || read_lock_list(&dir.path().join("locks.toml")).entries.is_empty()
    );
}

#[tokio::test]
async fn header_identities_are_locked_after_the_headers() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let relay = [10, 0, 0, 1];
    let msg = Msg::unauthenticated(relay, "x@lists.example").header("X-Authenticated-Sender", "zed@example.org");
    let mut last = Outcome::default();
    for _ in 0..8 {
        last = Mta::send(m.addr, &msg).await;
    }
    assert_eq!(
        last.refusal().as_deref(),
        Some("550 5.7.1 Sending as zed@example.org is suspended; please contact your postmaster")
    );
    assert!(matches!(last.eoh, Some(Status::Reject { .. })));
}

#[tokio::test]
async fn a_locked_header_identity_cannot_hide_victims_behind_support_addresses() {
    let config =
        fixture("escalation.toml").replace("max_recipients_per_message = 5", "max_recipients_per_message = 500");
    let m = Milter::spawn(&config).await;
    let relay = [10, 0, 0, 1];
    let zed = || Msg::unauthenticated(relay, "x@lists.example").header("X-Authenticated-Sender", "zed@example.org");
    for _ in 0..8 {
        Mta::send(m.addr, &zed()).await;
    }
    // Recipients arrive before the header names the (locked) identity: only
    // a message to support addresses alone may pass.
    let support_only = zed().to(&["postmaster@example.org", "abuse@example.org"]);
    assert!(Mta::send(m.addr, &support_only).await.accepted());
    let one_victim = zed().to(&["postmaster@example.org", "victim@elsewhere.example"]);
    let out = Mta::send(m.addr, &one_victim).await;
    assert!(matches!(out.eoh, Some(Status::Reject { .. })), "{out:?}");
    // More support recipients than are remembered, then a victim.
    let mut rcpts = vec!["postmaster@example.org"; 150];
    rcpts.push("victim@elsewhere.example");
    let out = Mta::send(m.addr, &zed().to(&rcpts)).await;
    assert!(out.rcpts.iter().all(|s| *s == Status::Continue));
    assert!(matches!(out.eoh, Some(Status::Reject { .. })), "{out:?}");
}

#[tokio::test]
async fn hold_mode_holds_up_to_the_hold_limit_then_refuses() {
    let m = Milter::spawn(&fixture("hold-limit.toml")).await;
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(Mta::send(m.addr, &Msg::from_user("bot@example.com")).await);
    }
    // Two accepted, the third attempt locks; then two held as evidence...
    assert!(outcomes[..2].iter().all(|o| o.accepted() && !o.held()), "{outcomes:?}");
    let held = outcomes.iter().filter(|o| o.held()).count();
    assert_eq!(held, 2, "{outcomes:?}");
    // ...and the rest refused with the locked reply, at MAIL: a bot that
    // sees 250 for everything would fill the hold queue.
    let locked = "550 5.7.1 Sending as bot@example.com is suspended; please contact your postmaster";
    for o in &outcomes[4..] {
        assert_eq!(o.refusal().as_deref(), Some(locked), "{o:?}");
        assert!(matches!(o.mail, Some(Status::Reject { .. })), "{o:?}");
    }
    // Another locked identity has a hold limit of its own.
    for _ in 0..3 {
        Mta::send(m.addr, &Msg::from_user("other@example.com")).await;
    }
    assert!(Mta::send(m.addr, &Msg::from_user("other@example.com")).await.held());
}

#[tokio::test]
async fn a_dry_run_rule_counts_as_its_action_but_only_logs() {
    let config = "[[rule]]\nname = \"per-minute\"\nrate = \"3/1m\"\naction = \"tempfail\"\n\n\
                  [[rule]]\nname = \"trial-lock\"\nrate = \"4/1h\"\naction = \"lock\"\ndry_run = true\n";
    let m = Milter::spawn(config).await;
    // The lock rule counts attempts (throttled ones too) and would lock at
    // the fifth, but only logs: the throttle still applies, nobody is locked.
    let outcomes: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(Mta::send(m.addr, &Msg::from_user("trial@example.com")).await);
        }
        v
    };
    assert!(outcomes[..3].iter().all(Outcome::accepted), "{outcomes:?}");
    for o in &outcomes[3..] {
        assert!(o.refusal().unwrap_or_default().starts_with("451 4.7.1"), "{o:?}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(m.lock_list().get("trial@example.com").is_none());
}
