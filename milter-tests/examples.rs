// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The shipped examples: conf/locks.toml read by the daemon's own parser and
//! enforced, and every example configuration in conf/ accepted.

use crate::common::*;
use egress_milter::config::Config;
use egress_milter::locks::file::{LockList, LockSource};
use egress_milter::locks::lock_normaliser;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf")
}

/// conf/locks.toml as the daemon reads it, with the example configuration's
/// normalisation.
fn example_lock_list() -> LockList {
    let config = Config::read(&conf_dir().join("egress-milter.toml")).unwrap_or_else(|e| panic!("{e}"));
    LockList::read(&conf_dir().join("locks.toml"), &*lock_normaliser(&config)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_lock_list_parses_with_every_documented_field() {
    let config = Config::read(&conf_dir().join("egress-milter.toml")).unwrap();
    let list = example_lock_list();
    let ids: Vec<&str> = list.entries.iter().map(|e| e.identity.as_str()).collect();
    assert_eq!(ids, ["j.doe@example.com", "sales@example.org", "203.0.113.7"]);

    // The automatic lock names a lock rule of the example configuration, as
    // the daemon's own entries do.
    let auto = list.get("j.doe@example.com").unwrap();
    assert_eq!(auto.source, LockSource::Auto);
    let rule = auto.rule.as_deref().unwrap();
    assert!(
        config
            .rules
            .iter()
            .any(|r| r.name.get_ref() == rule && r.action == egress_milter::config::Action::Lock),
        "{rule} is not a lock rule of conf/egress-milter.toml"
    );
    assert!(
        auto.reason.starts_with(&format!("rule \"{rule}\" exceeded: ")),
        "{}",
        auto.reason
    );
    assert_eq!(auto.previous_locks, 1);
    assert!(auto.expires_at.is_none() && auto.note.is_none());
    assert!(auto.is_active(auto.locked_at.0 + Duration::from_secs(10 * 365 * 86_400)));

    // The manual lock lifts itself at expires_at and carries a note.
    let manual = list.get("sales@example.org").unwrap();
    assert_eq!(manual.source, LockSource::Manual);
    assert!(manual.rule.is_none());
    let expires = manual.expires_at.unwrap();
    assert!(expires > manual.locked_at);
    assert!(manual.is_active(expires.0 - Duration::from_secs(1)));
    assert!(!manual.is_active(expires.0));
    assert!(manual.note.as_deref().unwrap().contains("ticket"));

    assert_eq!(list.get("203.0.113.7").unwrap().source, LockSource::Manual);

    // The identities are written in the form the daemon compares, and the
    // list survives the daemon's rewrite unchanged (bar the comments).
    let normalise = lock_normaliser(&config);
    for e in &list.entries {
        assert_eq!(normalise(&e.identity).as_deref(), Ok(e.identity.as_str()));
    }
    let rewritten = LockList::parse(&list.to_toml(), Path::new("rewritten.toml"), &*normalise).unwrap();
    assert_eq!(rewritten, list);
}

#[tokio::test]
async fn the_example_lock_list_is_enforced_by_the_example_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(conf_dir().join("locks.toml"), dir.path().join("locks.toml")).unwrap();
    let m = Milter::spawn_in(dir, &example_config(), egress_milter::clock::Clock::manual()).await;

    let out = Mta::send(m.addr, &Msg::from_user("J.Doe@Example.com")).await;
    assert_eq!(
        out.refusal().as_deref(),
        Some("550 5.7.1 Sending as j.doe@example.com is suspended; please contact your postmaster")
    );
    // A locked identity may still write to its postmaster.
    let support = Msg::from_user("j.doe@example.com").to(&["postmaster@example.com"]);
    assert!(Mta::send(m.addr, &support).await.accepted());
    // The client-address lock applies to unauthenticated mail from that host.
    let host = Mta::send(m.addr, &Msg::unauthenticated([203, 0, 113, 7], "www-data@example.com")).await;
    assert!(
        host.refusal().unwrap().contains("Sending as 203.0.113.7 is suspended"),
        "{host:?}"
    );
    // Nobody else is affected.
    assert!(Mta::send(m.addr, &Msg::from_user("alice@example.com")).await.accepted());
    assert!(
        Mta::send(m.addr, &Msg::unauthenticated([203, 0, 113, 8], "www-data@example.com"))
            .await
            .accepted()
    );
    // Loading the list did not rewrite it.
    let dir = m.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("locks.toml")).unwrap(),
        std::fs::read_to_string(conf_dir().join("locks.toml")).unwrap()
    );
}

#[test]
fn every_example_configuration_is_valid() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(conf_dir()).unwrap() {
        let path = entry.unwrap().path();
        let is_config =
            path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "locks.toml");
        if is_config {
            let config = Config::read(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.rules.is_empty(), "{} has no [[rule]]", path.display());
            checked.push(path);
        }
    }
    assert!(checked.iter().any(|p| p.ends_with("egress-milter.toml")), "{checked:?}");
}

/// The example configurations with every commented-out key turned on: a
/// `# key = value` or `# [table]` line, flush after the `# `, loses its
/// `# `. Indented examples inside prose (`#   socket = ...`) stay comments.
fn with_commented_keys_on(text: &str) -> String {
    let is_name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line;
            };
            let table = rest.trim_start_matches('[').trim_end_matches(']');
            let is_table = rest.starts_with('[') && rest.ends_with(']') && is_name(table);
            let is_key = rest.split_once(" = ").is_some_and(|(key, _)| is_name(key));
            if is_table || is_key { rest } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A key shown commented out in a shipped configuration (as its default or
/// as an example) is one the daemon accepts, with a value it accepts: a
/// user who removes the `# ` gets a valid file, and a key renamed in the
/// code cannot linger in the examples.
#[test]
fn every_commented_key_of_the_shipped_configurations_is_valid() {
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/etc/egress-milter.toml");
    let mut files = vec![packaged];
    for entry in std::fs::read_dir(conf_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "locks.toml") {
            files.push(path);
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let on = with_commented_keys_on(&text);
        assert_ne!(on, text, "{}: no commented key found", path.display());
        let config = Config::parse(&on, &path).unwrap_or_else(|e| panic!("with its commented keys on: {e}"));
        assert!(
            config.status.listen.is_some() && config.notify.is_enabled(),
            "{}",
            path.display()
        );
        // The commented content rules and their scanner go together: on,
        // they are valid, and check-config has nothing to say about them.
        assert!(
            config.scanner.is_enabled() && config.rules.iter().any(|r| r.count.is_content()),
            "{}",
            path.display()
        );
        let warnings = config.warnings();
        assert!(
            !warnings.iter().any(|w| w.contains("[scanner]")),
            "{}: {warnings:#?}",
            path.display()
        );
        // The commented overrides are the documented recipes: one that
        // raised a throttle and not the lock rule above it would get the
        // newsletter it was written for locked (issue 18).
        assert!(!config.overrides.is_empty(), "{}", path.display());
        let gaps = egress_milter::config::escalation::gaps(&config);
        assert!(gaps.is_empty(), "{}: {gaps:#?}", path.display());
    }
}

/// The newsletter override as it was documented (messages-per-hour and
/// messages-per-day raised, the lock rules left alone) against the shipped
/// rules: check-config names the lock rule it leaves alone.
#[test]
fn an_override_that_leaves_a_lock_rule_below_its_throttles_is_warned_about() {
    let text = std::fs::read_to_string(conf_dir().join("egress-milter.toml")).unwrap();
    let old = format!(
        "{text}\n[[override]]\nidentity = \"newsletter@example.com\"\nrates = {{ messages-per-hour = \"5000/1h\", messages-per-day = \"20000/1d\" }}\n"
    );
    let config = Config::parse(&old, &conf_dir().join("egress-milter.toml")).unwrap_or_else(|e| panic!("{e}"));
    let warnings = config.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("identity newsletter@example.com") && w.contains("\"lock-messages\"")),
        "{warnings:#?}"
    );
}
