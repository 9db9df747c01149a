// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Who is counted: SASL logins, trusted headers, forged headers.

use crate::common::*;
use indymilter_test::*;
use std::time::Duration;

#[tokio::test]
async fn negotiation_requests_only_what_is_needed() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let mta = m.mta().await;
    assert_eq!(mta.negotiated_actions(), Actions::QUARANTINE);
    let mail = mta.requested_macros().get(&MacroStage::Mail).unwrap();
    assert_eq!(mail.to_str().unwrap(), "i {auth_authen}");
    // No content scanner: neither HELO nor bodies.
    assert!(mta.negotiated_opts().contains(ProtoOpts::NO_HELO | ProtoOpts::NO_BODY));
    mta.close().await;
}

#[tokio::test]
async fn sasl_logins_are_counted_separately_and_normalised() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    for login in ["alice@example.com", "ALICE@Example.COM", "<alice@example.com>"] {
        assert!(Mta::send(m.addr, &Msg::from_user(login)).await.accepted(), "{login}");
    }
    let fourth = Mta::send(m.addr, &Msg::from_user("Alice@example.com")).await;
    assert_eq!(
        fourth.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for alice@example.com, retry in 1m")
    );
    // Bob has his own counters, whatever the envelope sender says.
    let mut bob = Msg::from_user("bob@example.com");
    bob.from = "<alice@example.com>".into();
    assert!(Mta::send(m.addr, &bob).await.accepted());
}

#[tokio::test]
async fn header_identity_from_trusted_relay_is_counted_per_header() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let relay = [10, 1, 2, 3];
    for _ in 0..3 {
        let msg =
            Msg::unauthenticated(relay, "bounce@lists.example").header("X-Authenticated-Sender", "carol@example.org");
        assert!(Mta::send(m.addr, &msg).await.accepted());
    }
    let msg = Msg::unauthenticated(relay, "other@lists.example")
        .header("X-Authenticated-Sender", "Carol <carol@example.org>");
    let out = Mta::send(m.addr, &msg).await;
    assert!(
        out.mail == Some(Status::Continue),
        "a header identity is refused only after the headers"
    );
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for carol@example.org, retry in 1m")
    );
    // Another header identity through the same relay is not affected.
    let dave = Msg::unauthenticated(relay, "x@lists.example").header("X-Authenticated-Sender", "dave@example.org");
    assert!(Mta::send(m.addr, &dave).await.accepted());
}

#[tokio::test]
async fn forged_header_from_untrusted_client_never_chooses_the_identity() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let outsider = [198, 51, 100, 7];
    // A spammer inventing a fresh identity per message is still one client.
    for i in 0..3 {
        let msg = Msg::unauthenticated(outsider, "x@spam.example")
            .header("X-Authenticated-Sender", &format!("fresh-{i}@example.org"));
        let out = Mta::send(m.addr, &msg).await;
        assert!(out.accepted(), "{out:?}");
    }
    let msg = Msg::unauthenticated(outsider, "x@spam.example").header("X-Authenticated-Sender", "fresh-99@example.org");
    let out = Mta::send(m.addr, &msg).await;
    assert!(out.tempfailed(), "refused by client address: {out:?}");
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for 198.51.100.7, retry in 1m")
    );
}

#[tokio::test]
async fn authenticated_session_header_is_not_believed_by_default() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    for i in 0..3 {
        let msg = Msg::from_user("mallory@example.com").header("X-Authenticated-Sender", &format!("v{i}@example.org"));
        assert!(Mta::send(m.addr, &msg).await.accepted());
    }
    let out = Mta::send(m.addr, &Msg::from_user("mallory@example.com")).await;
    assert!(out.refusal().unwrap().contains("mallory@example.com"));
}

#[tokio::test]
async fn conflicting_header_copies_from_a_trusted_relay_are_refused() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let msg = Msg::unauthenticated([10, 0, 0, 9], "x@lists.example")
        .header("X-Authenticated-Sender", "erin@example.org")
        .header("X-Authenticated-Sender", "frank@example.org");
    let out = Mta::send(m.addr, &msg).await;
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.3.0 Conflicting x-authenticated-sender headers: the sender cannot be identified")
    );
    // Identical copies are fine.
    let same = Msg::unauthenticated([10, 0, 0, 9], "x@lists.example")
        .header("X-Authenticated-Sender", "erin@example.org")
        .header("x-authenticated-sender", "<ERIN@example.org>");
    assert!(Mta::send(m.addr, &same).await.accepted());
}

#[tokio::test]
async fn garbage_logins_fall_through_without_harm() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    let long = "x".repeat(5000);
    let garbage = |login: &str| {
        let mut msg = Msg::from_user(login);
        msg.from = "<someone@example.com>".into();
        msg
    };
    for bad in ["", "a b", long.as_str()] {
        let out = Mta::send(m.addr, &garbage(bad)).await;
        assert!(out.accepted(), "{bad:?}: {out:?}");
    }
    // All fell back to the client address and used up its allowance.
    let out = Mta::send(m.addr, &garbage("@")).await;
    assert!(out.refusal().unwrap().contains("192.0.2.10"), "{out:?}");
}

/// A message as the webmail (or any SASL user) submits it, with a header.
fn stamped(login: &str, header: &str) -> Msg {
    Msg::from_user(login).header("X-Authenticated-Sender", header)
}

#[tokio::test]
async fn a_sasl_user_cannot_choose_its_identity_with_the_header() {
    let m = Milter::spawn(&fixture("header-logins.toml")).await;
    mallory_neither_escapes_nor_borrows(&m, "carol@example.com").await;
}

/// mallory, a SASL user whose header is not believed, stamps invented
/// identities (all counted as mallory: the fourth is throttled), then
/// `colleague`'s address: mallory is locked, the colleague is not and
/// still sends.
async fn mallory_neither_escapes_nor_borrows(m: &Milter, colleague: &str) {
    for i in 0..3 {
        let out = Mta::send(
            m.addr,
            &stamped("mallory@example.com", &format!("fresh-{i}@example.com")),
        )
        .await;
        assert!(out.accepted(), "{out:?}");
    }
    let out = Mta::send(m.addr, &stamped("mallory@example.com", "fresh-9@example.com")).await;
    assert!(
        out.refusal()
            .unwrap_or_default()
            .contains("exceeded for mallory@example.com"),
        "{out:?}"
    );
    for _ in 0..4 {
        Mta::send(m.addr, &stamped("mallory@example.com", colleague)).await;
    }
    eventually(Duration::from_secs(5), "mallory's lock written", async || {
        m.lock_list().get("mallory@example.com").is_some()
    })
    .await;
    assert!(m.lock_list().get(colleague).is_none());
    assert!(Mta::send(m.addr, &Msg::from_user(colleague)).await.accepted());
}

#[tokio::test]
async fn a_webmail_login_stamps_identities_and_is_counted_itself() {
    let m = Milter::spawn(&fixture("header-logins.toml")).await;
    // Each user the webmail stamps is counted as that user...
    for user in ["alice", "bob", "carol"] {
        let out = Mta::send(m.addr, &stamped("webmail@example.com", &format!("{user}@example.com"))).await;
        assert!(out.accepted(), "{user}: {out:?}");
    }
    // ...and the webmail's own login too: a fourth user's message is over
    // the webmail's 3 a minute, so a hijacked webmail trips its own rules.
    let out = Mta::send(m.addr, &stamped("webmail@example.com", "dave@example.com")).await;
    assert!(
        out.refusal()
            .unwrap_or_default()
            .contains("exceeded for webmail@example.com"),
        "{out:?}"
    );
}

/// A hand-written lock of one account.
fn lock_entry(identity: &str) -> String {
    format!(
        "[[lock]]\nidentity = \"{identity}\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T14:07:12Z\"\nreason = \"phished, ticket 4711\"\n"
    )
}

/// Cyrus sasldb, Dovecot and most user databases take one account under
/// several spellings; with the realms configured each is the same identity
/// (issue 18: a locked `mallory` went on sending as `mallory@realm`).
#[tokio::test]
async fn every_spelling_of_a_login_is_one_account() {
    let m = Milter::spawn(&fixture("realms.toml")).await;
    for login in ["alice", "ALICE@Example.com", "alice@mail.example.com"] {
        let out = Mta::send(m.addr, &Msg::from_user(login)).await;
        assert!(out.accepted(), "{login}: {out:?}");
    }
    // The fourth, under yet another spelling, is the same account's.
    let out = Mta::send(m.addr, &Msg::from_user("<Alice@MAIL.example.com.>")).await;
    assert_eq!(
        out.refusal().as_deref(),
        Some("451 4.7.1 Rate limit \"per-minute\" exceeded for alice@example.com, retry in 1m")
    );
    // A lock written by hand with any spelling refuses every spelling.
    std::fs::write(&m.lock_path, lock_entry("Mallory@Mail.Example.com")).unwrap();
    eventually(Duration::from_secs(5), "the lock read", async || {
        Mta::send(m.addr, &Msg::from_user("mallory"))
            .await
            .refusal()
            .is_some_and(|r| r.contains("is suspended"))
    })
    .await;
    for login in ["mallory", "MALLORY", "mallory@example.com", "mallory@mail.example.com"] {
        let out = Mta::send(m.addr, &Msg::from_user(login)).await;
        assert_eq!(
            out.refusal().as_deref(),
            Some("550 5.7.1 Sending as mallory@example.com is suspended; please contact your postmaster"),
            "{login}"
        );
    }
    // Another domain is another account.
    assert!(
        Mta::send(m.addr, &Msg::from_user("mallory@example.org"))
            .await
            .accepted()
    );
}

/// Adding the realms by a reload makes the locks already in the list cover
/// every spelling at once: the lock list follows the new normal form.
#[tokio::test]
async fn a_reload_that_adds_realms_extends_existing_locks_to_every_spelling() {
    let without = fixture("realms.toml")
        .replace("local_realms = [\"mail.example.com\"]\n", "")
        .replace("default_realm = \"example.com\"\n", "");
    let m = Milter::spawn(&without).await;
    std::fs::write(&m.lock_path, lock_entry("mallory@example.com")).unwrap();
    eventually(Duration::from_secs(5), "the lock read", async || {
        Mta::send(m.addr, &Msg::from_user("mallory@example.com"))
            .await
            .refusal()
            .is_some_and(|r| r.contains("is suspended"))
    })
    .await;
    // Without the realms, the bare login is another identity.
    assert!(Mta::send(m.addr, &Msg::from_user("mallory")).await.accepted());
    write_config(m.dir.path(), &fixture("realms.toml"), &format!("inet:{}", m.addr));
    m.reload().await;
    eventually(Duration::from_secs(5), "the bare login refused as locked", async || {
        Mta::send(m.addr, &Msg::from_user("mallory"))
            .await
            .refusal()
            .is_some_and(|r| r.contains("is suspended"))
    })
    .await;
}

/// The webmail recipe where the webmail host and the users who log in
/// share a trusted network (issue 18): a user's header is still not
/// believed, so it can neither escape its limits with invented identities
/// nor get a colleague locked.
#[tokio::test]
async fn a_login_on_the_trusted_network_cannot_stamp_the_header() {
    let config = fixture("header-logins.toml").replace(
        "header_logins = [\"webmail@example.com\"]",
        "header_logins = [\"webmail@example.com\"]\ntrusted_networks = [\"192.0.2.0/24\"]",
    );
    let m = Milter::spawn(&config).await;
    mallory_neither_escapes_nor_borrows(&m, "alice@example.com").await;
    // A relay on that network that does not log in is still believed.
    let relayed =
        Msg::unauthenticated([192, 0, 2, 30], "x@lists.example").header("X-Authenticated-Sender", "dave@example.com");
    assert!(Mta::send(m.addr, &relayed).await.accepted());
}
