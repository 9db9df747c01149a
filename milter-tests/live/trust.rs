// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Issue 18, items 1 and 2, driven the way they were found: through a real
//! Postfix with Cyrus sasldb, by a client that logs in under another
//! spelling of a locked account, and by a user on the webmail host's own
//! network who stamps the identity header. Each failed before its fix
//! (0b4637d, 9ea4c1f): the locked account got its mail out as
//! `mallory@realm`, and the user sent under invented identities and got a
//! colleague locked.

use crate::egress::MilterConfig;
use crate::harness::skip_unless_live;
use crate::scenarios::{Live, WAIT, assert_accepted, assert_refused, locked_text, message, password, throttled_text};
use crate::smtp::{Envelope, SendOutcome, Stage};

/// The small limits (3 messages an hour, lock at 6 attempts) with the
/// site's realm: Cyrus looks a bare login up in `example.com`.
fn realm_config() -> MilterConfig {
    MilterConfig::fixture("small-limits.toml")
        .set("identity.default_realm", "example.com")
        .set(
            "identity.local_realms",
            toml::Value::Array(vec!["mail.example.com".into()]),
        )
}

/// One message logged in as `spelling` with the password of `account`.
fn as_spelling(live: &Live, spelling: &str, account: &str, subject: &str) -> SendOutcome {
    let rcpt = format!("{subject}@remote.test");
    let envelope = Envelope::new(live.mta.postfix.submission_port(), account, &[&rcpt])
        .auth(spelling, &password(account))
        .content(&message(account, &[&rcpt], subject, &[]));
    live.send(&envelope)
}

/// A locked account is refused under every spelling Cyrus accepts, and
/// every spelling counts against the one account's limits.
#[test]
fn every_spelling_of_a_login_is_one_account_through_cyrus_sasldb() {
    if skip_unless_live() {
        return;
    }
    let live = Live::start_with(realm_config(), |o| o.main_cf("smtpd_sasl_local_domain = example.com"));

    // bob, three messages under three spellings: his hourly three.
    for (i, spelling) in ["bob", "bob@example.com", "bob"].iter().enumerate() {
        assert_accepted(&as_spelling(&live, spelling, "bob@example.com", &format!("bob-{i}")));
    }
    let fourth = as_spelling(&live, "bob@example.com", "bob@example.com", "bob-3");
    assert_refused(
        &fourth,
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", "bob@example.com"),
    );

    // The admin locks mallory, typing the bare login.
    let out = live
        .milter
        .cli(&["locks", "add", "Mallory", "--reason", "phished, ticket 4711"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        live.milter.wait_for_lock("mallory@example.com", WAIT).is_some(),
        "{:?}",
        live.milter.locks()
    );
    assert!(
        live.milter
            .wait_for_log(&["lock list reloaded", "mallory@example.com"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    // The attacker with the password tries every spelling.
    let mut authenticated = Vec::new();
    for spelling in ["mallory", "mallory@example.com", "Mallory@Example.COM", "MALLORY"] {
        let outcome = as_spelling(&live, spelling, "mallory@example.com", "mallory");
        if outcome.refused_at() == Some(Stage::Auth) {
            continue;
        }
        authenticated.push(spelling);
        assert_refused(
            &outcome,
            Stage::RcptTo,
            550,
            "5.7.1",
            &locked_text("mallory@example.com"),
        );
    }
    // Cyrus took at least the bare login and the login with its realm
    // (the two that escaped before).
    assert!(
        authenticated.contains(&"mallory") && authenticated.contains(&"mallory@example.com"),
        "{authenticated:?}"
    );
    live.assert_all_delivered(3);
}

/// The webmail recipe (header source first, the webmail's own login in
/// `header_logins`) with a `trusted_networks` that also covers the users
/// who log in with their own passwords: loopback here, a shared LAN at
/// many sites.
#[test]
fn a_user_on_the_webmail_network_cannot_stamp_the_header() {
    if skip_unless_live() {
        return;
    }
    let webmail = "webmail@example.com";
    let config = MilterConfig::fixture("small-limits.toml")
        .set(
            "identity.sources",
            toml::Value::Array(vec![
                "header:X-Authenticated-Sender".into(),
                "auth".into(),
                "client-address".into(),
            ]),
        )
        .set("identity.header_logins", toml::Value::Array(vec![webmail.into()]))
        .set(
            "identity.trusted_networks",
            toml::Value::Array(vec!["127.0.0.0/8".into()]),
        );
    let live = Live::start_with(config, |o| o.user(webmail, &password(webmail)));
    let port = live.mta.postfix.submission_port();
    let stamped = |login: &str, identity: &str, subject: &str| {
        let rcpt = format!("{subject}@remote.test");
        let envelope = Envelope::new(port, login, &[&rcpt])
            .auth(login, &password(login))
            .content(&message(
                login,
                &[&rcpt],
                subject,
                &[("X-Authenticated-Sender", identity)],
            ));
        live.send(&envelope)
    };
    let mallory = "mallory@example.com";
    // Invented identities, one a message: all mallory's three an hour.
    for i in 0..3 {
        assert_accepted(&stamped(
            mallory,
            &format!("fresh-{i}@example.com"),
            &format!("fresh-{i}"),
        ));
    }
    assert_refused(
        &stamped(mallory, "fresh-9@example.com", "fresh-9"),
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", mallory),
    );
    // Pushing on with alice's address: mallory's attempts, mallory's lock.
    for i in 0..3 {
        stamped(mallory, "alice@example.com", &format!("as-alice-{i}"));
    }
    assert!(
        live.milter.wait_for_lock(mallory, WAIT).is_some(),
        "{}",
        live.milter.log_tail(30)
    );
    assert!(live.milter.locks().get("alice@example.com").is_none());
    assert!(
        !live.milter.log_lines(&["not trusted to set it ignored"]).is_empty(),
        "{}",
        live.milter.log_tail(30)
    );
    // alice is untouched, and the webmail still stamps for its users.
    assert_accepted(&live.send(&live.submission("alice@example.com", &["friend@remote.test"], "alice-own")));
    assert_accepted(&stamped(webmail, "carol@example.com", "via-webmail"));
    assert!(
        live.milter
            .wait_for_log(&["accepted", "identity=carol@example.com"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    live.assert_all_delivered(5);
}

/// The issue's own setup: Postfix's default `smtpd_sasl_local_domain`
/// (empty), the account in Cyrus's default realm (the server's host name,
/// where `saslpasswd2` puts a user without `-u`). Cyrus takes `dave` and
/// `dave@<host name>`, and Postfix hands the milter the login as typed.
#[test]
fn the_bare_login_and_the_login_in_cyrus_default_realm_are_one_account() {
    if skip_unless_live() {
        return;
    }
    let host = crate::postfix::MYHOSTNAME;
    let account = format!("dave@{host}");
    let config = MilterConfig::fixture("small-limits.toml")
        .set("identity.default_realm", "example.com")
        .set("identity.local_realms", toml::Value::Array(vec![host.into()]));
    let live = Live::start_with(config, |o| o.user(&account, &password(&account)));
    let spellings = ["dave", account.as_str(), "dave", account.as_str()];
    let outcomes: Vec<SendOutcome> = spellings
        .iter()
        .enumerate()
        .map(|(i, s)| as_spelling(&live, s, &account, &format!("dave-{i}")))
        .collect();
    for (outcome, spelling) in outcomes.iter().zip(spellings).take(3) {
        assert_eq!(outcome.refused_at(), None, "{spelling}: {}", outcome.transcript);
    }
    // Both spellings reached the milter as given, and were counted as one.
    for login in ["dave", account.as_str()] {
        assert!(
            !live
                .milter
                .log_lines(&["accepted", "identity=dave@example.com"])
                .is_empty()
                && live.mta.postfix.log().contains(&format!("sasl_username={login}")),
            "{login}: {}",
            live.mta.postfix.log_tail(30)
        );
    }
    assert_refused(
        &outcomes[3],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", "dave@example.com"),
    );
    live.assert_all_delivered(3);
}
