// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The local door: mail submitted with Postfix's sendmail command reaches the
//! milter from 127.0.0.1 port 0, its first header the pickup stamp
//! `X-Egress-Submitter: uid=N id=QUEUEID`. Counted per Unix user and per PHP
//! script beside its user; the same headers over SMTP choose nothing. The
//! users are uid 0 (root, on every host) and a uid no host has.

use crate::common::*;
use indymilter_test::*;

/// A uid with no user: counted by its number.
const NOBODY: u32 = 4_000_000_000;

/// A local submission of `uid` (the stamp first, as Postfix puts it), with
/// `extra` headers below it.
fn local(uid: u32, extra: &[(&str, &str)]) -> Msg {
    let mut msg = Msg::unauthenticated([127, 0, 0, 1], "www@host.example");
    let stamp = format!("uid={uid} id={}", msg.queue_id);
    msg.headers = vec![("X-Egress-Submitter".into(), stamp)];
    msg.headers
        .extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    msg.headers.push(("Subject".into(), "hello".into()));
    msg
}

fn php(uid: u32, script: &str) -> Msg {
    local(uid, &[("X-PHP-Originating-Script", &format!("{uid}:{script}"))])
}

#[tokio::test]
async fn local_submissions_are_counted_per_stamped_user() {
    let m = Milter::spawn(&fixture("local-door.toml")).await;
    for _ in 0..3 {
        let out = Mta::send(m.addr, &local(0, &[])).await;
        assert!(out.accepted(), "{out:?}");
        assert_eq!(out.mail, Some(Status::Continue));
    }
    // Known only after the headers, refused there.
    let fourth = Mta::send(m.addr, &local(0, &[])).await;
    assert_eq!(fourth.mail, Some(Status::Continue));
    assert_eq!(
        fourth.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for local:root, retry in 1m")
    );
    // Another user has counters of its own; a uid with no name, its number.
    assert!(Mta::send(m.addr, &local(NOBODY, &[])).await.accepted());
    // A copy of the stamp below the first header is the sender's own (the
    // recipe not installed, say): not believed, the message is counted as
    // the client address, not as the uid it names.
    let mut below = local(NOBODY, &[]);
    below.headers.insert(0, ("Subject".into(), "first".into()));
    for _ in 0..3 {
        assert!(Mta::send(m.addr, &below).await.accepted());
    }
    assert_eq!(
        Mta::send(m.addr, &below).await.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for 127.0.0.1, retry in 1m")
    );
    // So is a stamp at the top naming another message's queue id.
    let mut stale = local(NOBODY, &[]);
    stale.headers[0].1 = format!("uid={NOBODY} id=4STALE1");
    assert!(
        Mta::send(m.addr, &stale)
            .await
            .refusal()
            .is_some_and(|r| r.contains("127.0.0.1"))
    );
}

#[tokio::test]
async fn over_smtp_the_stamp_chooses_nothing() {
    let m = Milter::spawn(&fixture("local-door.toml")).await;
    let smtp_client = "127.0.0.1:4711".parse().unwrap();
    for _ in 0..3 {
        assert!(Mta::send_from(m.addr, smtp_client, &php(0, "a.php")).await.accepted());
    }
    // Counted as the client address, decided at MAIL: the headers, which
    // would not be believed, choose nothing (refused once the envelope is
    // known).
    let out = Mta::send_from(m.addr, smtp_client, &local(NOBODY, &[])).await;
    assert!(out.tempfailed(), "{out:?}");
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for 127.0.0.1, retry in 1m")
    );
    // The local door's root is untouched by all that.
    assert!(Mta::send(m.addr, &local(0, &[])).await.accepted());
}

#[tokio::test]
async fn a_php_script_counts_against_its_user_and_a_locked_user_locks_its_scripts() {
    let m = Milter::spawn(&fixture("local-door.toml")).await;
    // Three scripts, or one renaming itself: root's three messages.
    for script in ["a.php", "b.php", "c.php"] {
        assert!(Mta::send(m.addr, &php(0, script)).await.accepted(), "{script}");
    }
    let renamed = Mta::send(m.addr, &php(0, "d.php")).await;
    assert_eq!(
        renamed.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for local:root, retry in 1m")
    );
    // A header naming another uid is not believed: root itself is counted.
    let forged = Mta::send(m.addr, &local(0, &[("X-PHP-Originating-Script", "33:x.php")])).await;
    assert!(forged.refusal().is_some_and(|r| r.contains("local:root")), "{forged:?}");
    // Pushing on: the lock rule counts root's attempts whatever the script,
    // and locks root itself.
    let mut locked = None;
    for i in 0..4 {
        let out = Mta::send(m.addr, &php(0, &format!("e{i}.php"))).await;
        if let Some(Status::Reject { .. }) = out.eoh {
            locked = Some(out);
            break;
        }
    }
    let locked = locked.expect("root was locked");
    assert!(locked.refusal().is_some_and(|r| r.starts_with("550")), "{locked:?}");
    eventually(std::time::Duration::from_secs(5), "the lock on disk", async || {
        m.lock_list().get("local:root").is_some()
    })
    .await;
    assert!(
        m.lock_list().get("php:root:e0.php").is_none(),
        "the user is locked, not a script"
    );
    // Every script of root is refused now, and root's plain mail; another
    // user's scripts are not.
    for msg in [php(0, "new.php"), local(0, &[])] {
        let out = Mta::send(m.addr, &msg).await;
        assert!(matches!(out.eoh, Some(Status::Reject { .. })), "{out:?}");
    }
    assert!(Mta::send(m.addr, &php(NOBODY, "new.php")).await.accepted());
}
