// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Issue 18, items 1 and 2, driven the way they were found: through a real
//! Postfix with Cyrus sasldb, by a client that logs in under another
//! spelling of a locked account, and by a user on the webmail host's own
//! network who stamps the identity header. Each failed before its fix
//! (0b4637d, 9ea4c1f): the locked account got its mail out as
//! `mallory@realm`, and the user sent under invented identities and got a
//! colleague locked. The first proof is made again through Dovecot SASL,
//! the other backend Postfix sites use (a private Dovecot of the instance,
//! see dovecot.rs).

use crate::egress::{MilterConfig, poll_until};
use crate::harness::skip_unless_live;
use crate::scenarios::{Live, WAIT, assert_accepted, assert_refused, locked_text, message, password, throttled_text};
use crate::smtp::{Envelope, SendOutcome, Stage};

/// The small limits (3 messages an hour, lock at 6 attempts) with the
/// site's realm: Cyrus looks a bare login up in `example.com`.
fn realm_config() -> MilterConfig {
    MilterConfig::fixture("small-limits.toml")
        .set("identity.default_realm", "example.com")
        .set("identity.local_realms", vec!["mail.example.com"])
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
    let config = crate::holes::webmail_recipe(webmail).set("identity.trusted_networks", vec!["127.0.0.0/8"]);
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
        .set("identity.local_realms", vec![host]);
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
    // Both spellings reached the milter as typed (Postfix's log is written
    // by postlogd a moment later: waited for), and were counted as one.
    for login in ["dave", account.as_str()] {
        assert!(
            live.mta.postfix.wait_for_log(&format!("sasl_username={login}\n"), WAIT),
            "{login}: {}",
            live.mta.postfix.log_tail(30)
        );
    }
    assert!(
        live.milter
            .wait_for_log(&["accepted", "identity=dave@example.com"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    assert_eq!(
        live.milter.log_lines(&["accepted", "identity=dave@example.com"]).len(),
        3,
        "{}",
        live.milter.log_tail(20)
    );
    assert_refused(
        &outcomes[3],
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", "dave@example.com"),
    );
    live.assert_all_delivered(3);
}

/// The same proof through Dovecot SASL (`smtpd_sasl_type = dovecot`), the
/// other backend Postfix sites use: a private Dovecot whose passwd-file
/// holds `alice@example.com`, with `auth_default_realm = example.com` and
/// `auth_username_format = %Lu`, takes `alice`, `alice@example.com` and
/// `ALICE@Example.com` (not `alice@mail.example.com`).
///
/// Unlike Cyrus, Dovecot canonicalises: its OK reply carries the user name
/// it looked up (`OK 1 user=alice@example.com original_user=ALICE@Example.com`
/// in its log), and Postfix takes that as the login, so it logs
/// `sasl_username=alice@example.com` and hands the milter `{auth_authen}` =
/// `alice@example.com` whatever the client typed. The milter sees one
/// spelling here; the test asserts that, and that counting and the lock
/// are one account across every spelling either way. The lock is written
/// as the admin types it, `ALICE`: `default_realm` makes that
/// `alice@example.com` too.
#[test]
fn every_spelling_dovecot_accepts_is_one_account() {
    if skip_unless_live() {
        return;
    }
    let account = "alice@example.com";
    let config = MilterConfig::fixture("small-limits.toml").set("identity.default_realm", "example.com");
    let live = Live::start_with(config, |o| o.dovecot_sasl("example.com"));
    let postfix = &live.mta.postfix;
    let dovecot = postfix.dovecot().expect("the instance's Dovecot");
    assert_eq!(postfix.postconf("smtpd_sasl_type").expect("postconf"), "dovecot");

    // Three messages under three spellings: alice's hourly three.
    let spellings = ["alice", "ALICE@Example.com", account];
    for (i, spelling) in spellings.iter().enumerate() {
        let outcome = as_spelling(&live, spelling, account, &format!("alice-{i}"));
        assert_eq!(outcome.refused_at(), None, "{spelling}: {}", outcome.transcript);
    }
    assert_refused(
        &as_spelling(&live, "Alice", account, "alice-3"),
        Stage::Data,
        451,
        "4.7.1",
        &throttled_text("messages-per-hour", account),
    );
    // Dovecot looked each spelling up as the one entry and said so to
    // Postfix, which logged (and gave the milter) only that name. Both logs
    // are written by a process of their own, a moment after the reply.
    let replied = |spelling: &str| {
        let reply = format!("\tuser={account}\toriginal_user={spelling}");
        dovecot
            .log()
            .lines()
            .any(|l| l.contains("client passdb out: OK\t") && l.ends_with(&reply))
    };
    for spelling in ["alice", "ALICE@Example.com", "Alice"] {
        assert!(
            poll_until(WAIT, || replied(spelling)),
            "{spelling}: {}",
            dovecot.log_tail(40)
        );
    }
    // smtpd's `client=..., sasl_method=PLAIN, sasl_username=...` line of
    // each queued message.
    let sasl_usernames = || -> Vec<String> {
        postfix
            .log()
            .lines()
            .filter(|l| l.contains("sasl_method="))
            .filter_map(|l| l.split("sasl_username=").nth(1))
            .map(|rest| rest.split([',', ' ']).next().unwrap_or(rest).to_string())
            .collect()
    };
    assert!(
        poll_until(WAIT, || sasl_usernames().len() == 4),
        "{}",
        postfix.log_tail(40)
    );
    assert_eq!(sasl_usernames(), [account; 4]);
    assert!(
        poll_until(WAIT, || live
            .milter
            .log_lines(&["accepted", &format!("identity={account}")])
            .len()
            == 3),
        "{}",
        live.milter.log_tail(20)
    );

    // The admin locks ALICE; every spelling Dovecot accepts is refused.
    let out = live
        .milter
        .cli(&["locks", "add", "ALICE", "--reason", "phished, ticket 4712"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        live.milter.wait_for_lock(account, WAIT).is_some(),
        "{:?}",
        live.milter.locks()
    );
    assert!(
        live.milter.wait_for_log(&["lock list reloaded", account], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    let mut authenticated = Vec::new();
    for spelling in ["alice", account, "ALICE@Example.com", "Alice", "alice@mail.example.com"] {
        let outcome = as_spelling(&live, spelling, account, "alice-locked");
        if outcome.refused_at() == Some(Stage::Auth) {
            continue;
        }
        authenticated.push(spelling);
        assert_refused(&outcome, Stage::RcptTo, 550, "5.7.1", &locked_text(account));
    }
    assert_eq!(authenticated, ["alice", account, "ALICE@Example.com", "Alice"]);
    live.assert_all_delivered(3);
}
