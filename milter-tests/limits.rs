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
        assert!(matches!(
            Mta::send(m.addr, &alice).await.mail,
            Some(Status::Tempfail { .. })
        ));
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
async fn bounces_are_not_counted() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let mut bounce = Msg::from_user("bob@example.com");
    bounce.from = "<>".into();
    for _ in 0..10 {
        assert!(Mta::send(m.addr, &bounce).await.accepted());
    }
    assert!(Mta::send(m.addr, &Msg::from_user("bob@example.com")).await.accepted());
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
