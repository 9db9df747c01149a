// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Message and recipient limits, replies, and counting only accepted mail.

use crate::common::*;
use indymilter_test::*;
use std::time::Duration;

#[tokio::test]
async fn refused_mail_does_not_eat_the_quota() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let alice = Msg::from_user("alice@example.com");
    for _ in 0..3 {
        assert!(Mta::send(m.addr, &alice).await.accepted());
    }
    // Two refusals (attempts, below the lock rule's 6) ...
    for _ in 0..2 {
        assert!(Mta::send(m.addr, &alice).await.tempfailed());
    }
    // ... do not delay the next one: it fits as soon as the minute of the
    // first three is over (3/1m: never a 4th within a minute of them).
    m.clock.advance(Duration::from_secs(60));
    assert!(Mta::send(m.addr, &alice).await.accepted());
    assert!(!Mta::send(m.addr, &alice).await.accepted());
}

#[tokio::test]
async fn aborted_messages_are_not_counted() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let mut mta = m.mta().await;
    mta.connect([192, 0, 2, 10]).await;
    let msg = Msg::from_user("alice@example.com").rcpts(3);
    // The client gives up after RCPT (RSET or QUIT) three times.
    for _ in 0..3 {
        mta.abandon_after_rcpt(&msg).await;
    }
    // None of them counted: the full allowance of 3 is still there.
    for i in 0..3 {
        assert!(mta.transaction(&msg).await.accepted(), "message {i}");
    }
    assert!(!mta.transaction(&msg).await.accepted());
    mta.close().await;
}

#[tokio::test]
async fn recipients_are_counted_one_by_one_and_refused_at_rcpt() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    // 5 recipients accepted (the per-message cap), the 6th refused at once.
    let out = Mta::send(m.addr, &Msg::from_user("rita@example.com").rcpts(6)).await;
    assert_eq!(&out.rcpts[..5], &[const { Status::Continue }; 5]);
    assert_eq!(
        out.rcpts[5],
        Status::Reject {
            message: Some(c"550 5.5.3 Too many recipients: at most 5 per message".into())
        }
    );
    assert!(out.accepted());
    // 5 of 8 recipients per hour used: a second message gets 3 more, then 550.
    let out = Mta::send(m.addr, &Msg::from_user("rita@example.com").rcpts(4)).await;
    assert_eq!(&out.rcpts[..3], &[const { Status::Continue }; 3]);
    let refusal = out.refusal().unwrap();
    assert_eq!(
        refusal,
        "550 5.7.1 Rate limit \"recipients-per-hour\" exceeded for rita@example.com"
    );
    assert!(out.accepted(), "the message still goes to the recipients that fit");
    // Now even one recipient is over the limit.
    let out = Mta::send(m.addr, &Msg::from_user("rita@example.com")).await;
    assert!(!out.accepted());
}

#[tokio::test]
async fn null_sender_mail_of_a_sasl_user_is_counted_like_any_other() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let mut bounce = Msg::from_user("bob@example.com");
    bounce.from = "<>".into();
    for i in 0..3 {
        assert!(Mta::send(m.addr, &bounce).await.accepted(), "message {i}");
    }
    let out = Mta::send(m.addr, &bounce).await;
    assert!(
        out.tempfailed(),
        "a fourth null-sender message in a minute is throttled: {out:?}"
    );
    // Attempts count towards the lock rule too: pushing on locks bob.
    for _ in 0..4 {
        Mta::send(m.addr, &bounce).await;
    }
    let out = Mta::send(m.addr, &Msg::from_user("bob@example.com")).await;
    assert!(
        out.refusal()
            .unwrap_or_default()
            .contains("Sending as bob@example.com is suspended"),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_mtas_own_bounces_at_the_local_door_are_not_counted() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    // Postfix hands locally submitted mail to non_smtpd_milters as from
    // 127.0.0.1 port 0; its bounce daemon's mail comes that way, with <>.
    let mut bounce = Msg::unauthenticated([127, 0, 0, 1], "x");
    bounce.from = "<>".into();
    for i in 0..10 {
        assert!(Mta::send(m.addr, &bounce).await.accepted(), "bounce {i}");
    }
    // The same door with a sender is counted (per client address).
    let local = Msg::unauthenticated([127, 0, 0, 1], "www-data@example.com");
    for _ in 0..3 {
        assert!(Mta::send(m.addr, &local).await.accepted());
    }
    assert!(!Mta::send(m.addr, &local).await.accepted());
}

#[tokio::test]
async fn inbound_mail_is_never_refused_or_counted() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    // A stranger's MTA, not authenticated, not in [scope] networks: mail
    // from the internet to local users. 40 messages against a limit of 3 a
    // minute and a lock rule at 6, with 10 recipients each (cap 5).
    let inbound = Msg::unauthenticated([203, 0, 113, 50], "news@remote.example").rcpts(10);
    for i in 0..40 {
        let out = Mta::send(m.addr, &inbound).await;
        assert!(out.accepted() && out.refusal().is_none(), "message {i}: {out:?}");
    }
    let locks = std::fs::read_to_string(&m.lock_path).unwrap_or_default();
    assert!(!locks.contains("203.0.113.50"), "{locks}");
}

#[tokio::test]
async fn the_example_config_throttles_at_its_documented_rate() {
    let m = Milter::spawn(&example_config()).await;
    let mut mta = m.mta().await;
    mta.connect([192, 0, 2, 10]).await;
    let msg = Msg::from_user("user@example.com");
    for i in 0..30 {
        assert!(mta.transaction(&msg).await.accepted(), "message {i}");
    }
    let out = mta.transaction(&msg).await;
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"messages-per-minute\" exceeded for user@example.com, retry in 1m")
    );
    mta.close().await;
}

/// The shipped rules plus an override for `newsletter@example.com` with
/// `rates` (a TOML inline table).
fn example_with_newsletter(rates: &str) -> String {
    format!(
        "{}\n[[override]]\nidentity = \"newsletter@example.com\"\nrates = {rates}\n",
        example_config()
    )
}

/// The newsletter override exactly as conf/egress-milter.toml documents it
/// (its commented `rates` line).
fn documented_newsletter_rates() -> String {
    let text = example_config();
    let after = text
        .split_once("# identity = \"newsletter@example.com\"\n")
        .expect("the documented newsletter override")
        .1;
    let line = after.lines().next().unwrap_or_default();
    line.strip_prefix("# rates = ")
        .unwrap_or_else(|| panic!("not a rates line: {line}"))
        .to_string()
}

/// `n` newsletter messages, one subscriber each (at `domains` domains),
/// one every `every` of the manual clock, on one connection; how many were
/// accepted.
async fn send_newsletter(m: &Milter, n: usize, domains: usize, every: Duration) -> usize {
    let mut mta = m.mta().await;
    mta.connect([192, 0, 2, 10]).await;
    let mut accepted = 0;
    for i in 0..n {
        let msg = Msg {
            rcpts: vec![format!("<subscriber{i}@d{}.example>", i % domains)],
            ..Msg::from_user("newsletter@example.com")
        };
        let out = mta.transaction(&msg).await;
        if out.accepted() {
            accepted += 1;
        } else if out.refusal().is_some_and(|r| r.contains("is suspended")) {
            break;
        }
        m.clock.advance(every);
    }
    mta.close().await;
    accepted
}

/// Issue 18: the override the docs showed raised messages-per-hour but not
/// lock-messages, and a newsletter at 20 a minute was locked after 900
/// accepted messages without ever being throttled.
#[tokio::test]
async fn the_documented_newsletter_override_is_never_locked_at_its_pace() {
    let m = Milter::spawn(&example_with_newsletter(&documented_newsletter_rates())).await;
    // 50 a minute for half an hour.
    let accepted = send_newsletter(&m, 1500, 400, Duration::from_millis(1200)).await;
    assert_eq!(accepted, 1500);
    assert!(m.lock_list().get("newsletter@example.com").is_none());

    // The override as it was documented: locked at its 901st message at 20
    // a minute (to the big providers' 20 domains), never throttled before.
    let m = Milter::spawn(&example_with_newsletter(
        "{ messages-per-hour = \"5000/1h\", messages-per-day = \"20000/1d\" }",
    ))
    .await;
    let accepted = send_newsletter(&m, 1000, 20, Duration::from_secs(3)).await;
    assert_eq!(accepted, 900);
    eventually(Duration::from_secs(5), "the newsletter's lock written", async || {
        m.lock_list().get("newsletter@example.com").is_some()
    })
    .await;
}
