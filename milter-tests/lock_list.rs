// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock list as admins use it: persistence, hand edits, the CLI, corruption.

use crate::common::*;
use egress_milter::clock::Clock;
use std::time::Duration;

const LOCKED: &str = "550 5.7.1 Sending as mallory@example.com is suspended; please contact your postmaster";

async fn lock_mallory(m: &Milter) {
    for _ in 0..7 {
        Mta::send(m.addr, &Msg::from_user("mallory@example.com")).await;
    }
    eventually(Duration::from_secs(5), "lock written", async || {
        m.lock_list().get("mallory@example.com").is_some()
    })
    .await;
}

async fn refusal(m: &Milter, login: &str) -> Option<String> {
    Mta::send(m.addr, &Msg::from_user(login)).await.refusal()
}

#[tokio::test]
async fn locks_survive_a_restart() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    lock_mallory(&m).await;
    let dir = m.shutdown().await;
    let m = Milter::spawn_in(dir, &fixture("escalation.toml"), Clock::manual()).await;
    assert_eq!(refusal(&m, "mallory@example.com").await.as_deref(), Some(LOCKED));
    assert_eq!(refusal(&m, "alice@example.com").await, None);
}

#[tokio::test]
async fn a_lock_set_just_before_shutdown_is_written_on_the_way_out() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    for _ in 0..7 {
        Mta::send(m.addr, &Msg::from_user("mallory@example.com")).await;
    }
    let dir = m.shutdown().await;
    let list = read_lock_list(&dir.path().join("locks.toml"));
    assert!(list.get("mallory@example.com").is_some());
}

#[tokio::test]
async fn hand_edits_are_picked_up_without_a_restart() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    lock_mallory(&m).await;
    // The admin deletes the entry and adds one by hand.
    std::fs::write(
        &m.lock_path,
        // Local time with an offset, as an admin might type it; and a clock
        // set wrong on the host where the entry was written.
        "[[lock]]\nidentity = \"Eve@Example.com\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T11:00:00+01:00\"\nreason = \"phishing kit found\"\n\n\
         [[lock]]\nidentity = \"zed@example.com\"\nsource = \"manual\"\nlocked_at = \"2999-01-01T00:00:00Z\"\nreason = \"skewed\"\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), "mallory unlocked", async || {
        refusal(&m, "mallory@example.com").await.is_none()
    })
    .await;
    let eve = "550 5.7.1 Sending as eve@example.com is suspended; please contact your postmaster";
    assert_eq!(refusal(&m, "eve@example.com").await.as_deref(), Some(eve));
    let show = cli(&m.config_path, &["locks", "show", "eve@example.com"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("locked at:      2026-11-23T10:00:00Z ("), "{show}");
    let show = cli(&m.config_path, &["locks", "show", "zed@example.com"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("in the future: check the clocks)"), "{show}");
}

#[tokio::test]
async fn a_corrupt_lock_list_keeps_the_last_good_one_in_force_and_is_not_overwritten() {
    let m = Milter::spawn(&fixture("escalation.toml")).await;
    lock_mallory(&m).await;
    let broken = "[[lock]]\nidentity = \"mallory@example.com\"\nsource = \"manu";
    std::fs::write(&m.lock_path, broken).unwrap();
    // Let the watcher see the broken file (it polls every 2 s) ...
    m.reload().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refusal(&m, "mallory@example.com").await.as_deref(), Some(LOCKED));
    // ... and lock someone else meanwhile: enforced, but the file is left
    // alone; the replies do not wait for a write that cannot succeed.
    let started = std::time::Instant::now();
    for _ in 0..7 {
        Mta::send(m.addr, &Msg::from_user("trent@example.com")).await;
    }
    assert!(
        refusal(&m, "trent@example.com")
            .await
            .unwrap()
            .contains("trent@example.com is suspended")
    );
    assert!(
        started.elapsed() < egress_milter::milter::callbacks::LOCK_WRITE_WAIT,
        "the locked replies waited for a failing write ({:?})",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&m.lock_path).unwrap(), broken);
    // Once the admin fixes the file, the pending lock is written into it.
    std::fs::write(&m.lock_path, "").unwrap();
    eventually(
        Duration::from_secs(15),
        "pending lock written after the fix",
        async || m.lock_list().get("trent@example.com").is_some(),
    )
    .await;
    // Mallory was unlocked by the fixed (empty) file; trent stays locked.
    assert_eq!(refusal(&m, "mallory@example.com").await, None);
    assert!(refusal(&m, "trent@example.com").await.is_some());
}

#[tokio::test]
async fn cli_changes_are_picked_up_by_the_running_daemon() {
    // Limits the polling below cannot reach, so only the CLI's lock refuses.
    let config = fixture("escalation.toml")
        .replace("rate = \"3/1m\"", "rate = \"1000/1m\"")
        .replace("rate = \"8/1h\"", "rate = \"1000/1h\"")
        .replace("rate = \"6/1h\"", "rate = \"1000/1h\"")
        .replace("[locks]\n", "[locks]\npoll_interval = \"100ms\"\n");
    let m = Milter::spawn(&config).await;
    let out = cli(
        &m.config_path,
        &[
            "locks",
            "add",
            "Oscar@Example.com",
            "--reason",
            "password leaked",
            "--expires",
            "24h",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "locked oscar@example.com for 1d\n"
    );
    eventually(Duration::from_secs(10), "manual lock enforced", async || {
        refusal(&m, "oscar@example.com")
            .await
            .is_some_and(|r| r.contains("oscar@example.com is suspended"))
    })
    .await;
    let list = cli(&m.config_path, &["locks", "list"]);
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.starts_with("IDENTITY"), "{table}");
    assert!(table.contains("oscar@example.com") && table.contains("manual") && table.contains("password leaked"));
    let show = cli(&m.config_path, &["locks", "show", "oscar@example.com"]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("reason:         password leaked"));
    // Adding twice is refused and says since when.
    let again = cli(&m.config_path, &["locks", "add", "oscar@example.com", "--reason", "x"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already locked since"));

    let out = cli(&m.config_path, &["locks", "remove", "oscar@example.com"]);
    assert!(out.status.success());
    eventually(Duration::from_secs(10), "unlocked", async || {
        refusal(&m, "oscar@example.com").await.is_none()
    })
    .await;
    let missing = cli(&m.config_path, &["locks", "remove", "oscar@example.com"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn the_cli_refuses_to_overwrite_a_corrupt_lock_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fixture("escalation.toml"), "inet:127.0.0.1:7025");
    std::fs::write(dir.path().join("locks.toml"), "[[lock]]\nidentity = 42\n").unwrap();
    let out = cli(&config, &["locks", "add", "a@example.com", "--reason", "r"]);
    assert_eq!(out.status.code(), Some(78), "an unusable lock list is EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locks.toml: line 2"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("locks.toml")).unwrap(),
        "[[lock]]\nidentity = 42\n"
    );
    let check = cli(&config, &["check-config"]);
    assert_eq!(check.status.code(), Some(78));
}

#[tokio::test]
async fn expired_locks_lift_themselves() {
    let m =
        Milter::spawn(&fixture("escalation.toml").replace("[locks]\n", "[locks]\nauto_lock_duration = \"1h\"\n")).await;
    lock_mallory(&m).await;
    assert!(m.lock_list().get("mallory@example.com").unwrap().expires_at.is_some());
    assert_eq!(refusal(&m, "mallory@example.com").await.as_deref(), Some(LOCKED));
    m.clock.advance(Duration::from_secs(3601));
    assert_eq!(refusal(&m, "mallory@example.com").await, None);
}

/// Polls `refused` until it holds, at most `within` after `since`; returns
/// how long after `since` it held.
async fn refused_within(
    since: std::time::Instant,
    within: Duration,
    what: &str,
    refused: impl AsyncFn() -> bool,
) -> Duration {
    loop {
        if refused().await {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{what}: not in force {within:?} after it was written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_lock_written_into_a_missing_lock_list_is_in_force_within_poll_interval() {
    // The default poll_interval (250ms); limits the polling cannot reach.
    let config = fixture("escalation.toml")
        .replace("rate = \"3/1m\"", "rate = \"1000/1m\"")
        .replace("rate = \"8/1h\"", "rate = \"1000/1h\"")
        .replace("rate = \"6/1h\"", "rate = \"1000/1h\"");
    let m = Milter::spawn(&config).await;
    assert!(!m.lock_path.exists(), "the daemon starts without a lock list");
    // Within poll_interval plus a margin for two noisy cores; before the
    // fix a lock in a file that was missing waited for the file to be a
    // second old (1.0 to 1.25 s).
    let within = Duration::from_millis(600);

    // With the CLI, which creates the file by rename.
    let out = cli(
        &m.config_path,
        &["locks", "add", "oscar@example.com", "--reason", "password leaked"],
    );
    let written = std::time::Instant::now();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took = refused_within(written, within, "a lock added with the CLI", async || {
        refusal(&m, "oscar@example.com").await.is_some()
    })
    .await;
    println!("locks add into a missing lock list: in force after {took:?}");

    // The file goes away (oscar unlocked), then an admin writes a new one
    // in place, by hand.
    std::fs::remove_file(&m.lock_path).unwrap();
    eventually(Duration::from_secs(5), "unlocked by the removal", async || {
        refusal(&m, "oscar@example.com").await.is_none()
    })
    .await;
    std::fs::write(
        &m.lock_path,
        "[[lock]]\nidentity = \"eve@example.com\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"phishing kit found\"\n",
    )
    .unwrap();
    let written = std::time::Instant::now();
    let took = refused_within(written, within, "a lock written by hand", async || {
        refusal(&m, "eve@example.com").await.is_some()
    })
    .await;
    println!("hand-written lock list where none was: in force after {took:?}");
}

/// Issue 18: an identity that `locks add` and the review desk refuse (here
/// markup) added to the file by hand makes it invalid like any other
/// malformed entry: the daemon keeps its last good list in force and logs
/// file, line and why, and the CLI names the line.
#[tokio::test]
async fn a_hand_added_identity_the_cli_refuses_keeps_the_last_good_list_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = fixture("escalation.toml").replace("[locks]\n", "[locks]\npoll_interval = \"100ms\"\n");
    let path = write_config(dir.path(), &config, &format!("inet:{addr}"));
    let daemon = Process::start(&path, addr).await;
    let out = cli(&path, &["locks", "add", "mallory@example.com", "--reason", "hijacked"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(10), "mallory's lock enforced", async || {
        Mta::send(addr, &Msg::from_user("mallory@example.com"))
            .await
            .refusal()
            .as_deref()
            == Some(LOCKED)
    })
    .await;

    // The admin replaces the list by hand: mallory's entry gone, eve's added,
    // and one with markup for an identity.
    let list = dir.path().join("locks.toml");
    let edited = "[[lock]]\nidentity = \"eve@example.com\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"phishing\"\n\n\
                  [[lock]]\nidentity = \"<script>alert(1)</script>\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"xss\"\n";
    std::fs::write(&list, edited).unwrap();
    let why = format!(
        "lock list not reloaded, keeping the last good list (1 locks) in force: {}: line 8: \"<script>alert(1)</script>\" is not a valid identity",
        list.display()
    );
    eventually(Duration::from_secs(10), "the refusal logged", async || {
        daemon.log_text().contains(&why)
    })
    .await;
    // Nothing of the edit applies: mallory stays locked, eve is not.
    assert_eq!(
        Mta::send(addr, &Msg::from_user("mallory@example.com"))
            .await
            .refusal()
            .as_deref(),
        Some(LOCKED)
    );
    assert!(Mta::send(addr, &Msg::from_user("eve@example.com")).await.accepted());
    // The CLI names the line, refuses to change the file, and so does check-config.
    for args in [&["locks", "list"][..], &["locks", "list", "--json"], &["check-config"]] {
        let out = cli(&path, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {err}");
        assert!(
            err.contains("locks.toml: line 8: \"<script>alert(1)</script>\" is not a valid identity"),
            "{args:?}: {err}"
        );
    }
    let add = cli(&path, &["locks", "add", "trent@example.com", "--reason", "r"]);
    assert_eq!(add.status.code(), Some(78));
    assert_eq!(std::fs::read_to_string(&list).unwrap(), edited);

    // Fixed by hand: applied at the next poll.
    std::fs::write(&list, edited.split("\n\n").next().unwrap()).unwrap();
    eventually(Duration::from_secs(10), "the fixed list applied", async || {
        Mta::send(addr, &Msg::from_user("mallory@example.com")).await.accepted()
    })
    .await;
    assert!(
        Mta::send(addr, &Msg::from_user("eve@example.com"))
            .await
            .refusal()
            .is_some_and(|r| r.contains("eve@example.com is suspended"))
    );
}
