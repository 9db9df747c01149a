// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The real binary: configuration errors, signals, restarts, logs.

use crate::common::*;
use indymilter_test::Status;
use std::net::SocketAddr;
use std::time::Duration;

fn config_with_port(dir: &std::path::Path, config: &str) -> (std::path::PathBuf, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (write_config(dir, config, &format!("inet:{addr}")), addr)
}

#[tokio::test]
async fn a_bad_config_names_file_line_and_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "socket = \"inet:127.0.0.1:7025\"\n\n[[rule]]\nname = \"x\"\nrate = \"lots\"\naction = \"tempfail\"\n",
    )
    .unwrap();
    for args in [&["run"][..], &["check-config"], &["locks", "list"]] {
        let out = cli(&path, args);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "egress-milter: {}: line 5: key \"rule[0].rate\": invalid rate \"lots\"",
                path.display()
            )),
            "{err}"
        );
    }
    let out = cli(&dir.path().join("missing.toml"), &["run"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read"));
}

#[tokio::test]
async fn the_example_config_checks_clean() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/egress-milter.toml");
    let out = cli(&path, &["check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[tokio::test]
async fn sighup_applies_a_changed_limit_and_keeps_the_old_config_if_broken() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture("escalation.toml").replace("3/1m", "1/1h");
    let (path, addr) = config_with_port(dir.path(), &config);
    let p = Process::start(&path, addr).await;
    let send = |login: &'static str| async move { Mta::send(addr, &Msg::from_user(login)).await };
    assert!(send("a@example.com").await.accepted());
    assert!(!send("a@example.com").await.accepted());

    // Raise the limit and reload.
    let raised = std::fs::read_to_string(&path).unwrap().replace("1/1h", "3/1h");
    std::fs::write(&path, &raised).unwrap();
    p.signal("HUP");
    eventually(Duration::from_secs(10), "raised limit in force", async || {
        send("b@example.com").await.accepted() && send("b@example.com").await.accepted()
    })
    .await;

    // A broken file: the daemon says why and keeps the running config.
    std::fs::write(&path, raised.replace("action = \"tempfail\"", "action = \"explode\"")).unwrap();
    p.signal("HUP");
    eventually(Duration::from_secs(10), "reload failure logged", async || {
        p.log_text()
            .contains("configuration not reloaded, keeping the running one")
    })
    .await;
    let log = p.log_text();
    assert!(
        log.contains("line ") && log.contains("unknown variant `explode`"),
        "{log}"
    );
    assert!(send("c@example.com").await.accepted());
    assert!(send("c@example.com").await.accepted());
    assert!(send("c@example.com").await.accepted());
    assert!(!send("c@example.com").await.accepted(), "still the 3/1h limit");
    assert!(p.stop().await.success());
}

#[tokio::test]
async fn a_lock_is_written_before_it_refuses_and_a_restart_enforces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = config_with_port(dir.path(), &fixture("escalation.toml").replace("3/1m", "3/1h"));
    let p = Process::start(&path, addr).await;
    for _ in 0..7 {
        Mta::send(addr, &Msg::from_user("mallory@example.com")).await;
    }
    // Written before the locked reply went out, and said so in the log.
    let list = read_lock_list(&dir.path().join("locks.toml"));
    assert!(list.get("mallory@example.com").is_some());
    let log = p.log_text();
    assert!(
        log.contains("lock written") && log.contains("identities=mallory@example.com locks=1"),
        "{log}"
    );
    assert!(p.stop().await.success());

    let p = Process::start(&path, addr).await;
    let out = Mta::send(addr, &Msg::from_user("mallory@example.com")).await;
    assert!(out.refusal().unwrap().contains("is suspended"));
    let log = p.log_text();
    assert!(
        log.contains("identity locked") && log.contains("mallory@example.com"),
        "{log}"
    );
    assert!(p.stop().await.success());
}

/// Counters are saved at SIGTERM and restored at start, so a restart is no
/// fresh quota; a damaged or stale state is said so, and the daemon starts
/// with empty counters all the same.
#[tokio::test]
async fn counters_survive_a_clean_restart_but_not_a_damaged_or_stale_state() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = config_with_port(dir.path(), &fixture("escalation.toml").replace("3/1m", "3/1h"));
    let state = dir.path().join("counters.state");
    let send = |login: &'static str| async move { Mta::send(addr, &Msg::from_user(login)).await };
    // The log of every run (they append to it), and of the runs since `from`.
    let log_path = path.with_extension("log");
    let all_logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let log_of = |_: &Process, from: usize| all_logs()[from..].to_string();

    let p = Process::start(&path, addr).await;
    for _ in 0..3 {
        assert!(send("alice@example.com").await.accepted());
    }
    assert!(!send("alice@example.com").await.accepted());
    assert!(send("bob@example.com").await.accepted());
    assert!(p.stop().await.success());
    let log = all_logs();
    // Three rules each for alice and bob (the lock rule counts attempts).
    assert!(log.contains("counters saved") && log.contains("buckets=6"), "{log}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the hash key is for the daemon only");

    // Restarted: alice's hour is still full, bob has room for two more.
    let from = log.len();
    let p = Process::start(&path, addr).await;
    let out = send("alice@example.com").await;
    let refusal = out.refusal().unwrap_or_default();
    assert!(refusal.starts_with("451 4.7.1 Rate limit"), "{out:?}");
    assert!(send("bob@example.com").await.accepted());
    assert!(send("bob@example.com").await.accepted());
    assert!(!send("bob@example.com").await.accepted());
    let log = log_of(&p, from);
    let line = log
        .lines()
        .find(|l| l.contains("counters restored"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("buckets=6") && line.contains("age=") && line.contains("counters.state"),
        "{line}"
    );
    assert!(p.stop().await.success());

    // A damaged file: logged, and empty counters.
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let from = all_logs().len();
    let p = Process::start(&path, addr).await;
    assert!(send("alice@example.com").await.accepted(), "{}", p.log_text());
    let log = log_of(&p, from);
    assert!(
        log.contains(&format!(
            "counters not restored from {}: checksum mismatch",
            state.display()
        )) && log.contains("starting with empty counters"),
        "{log}"
    );
    assert!(p.stop().await.success());

    // Older than state_max_age: logged, and empty counters.
    let config = std::fs::read_to_string(&path).unwrap() + "\n[store]\nstate_max_age = \"1s\"\n";
    std::fs::write(&path, config).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let from = all_logs().len();
    let p = Process::start(&path, addr).await;
    assert!(send("alice@example.com").await.accepted());
    let log = log_of(&p, from);
    assert!(log.contains("longer than store.state_max_age (1s)"), "{log}");
    assert!(p.stop().await.success());
}

#[tokio::test]
async fn dry_run_logs_what_it_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = config_with_port(dir.path(), &fixture("dry-run.toml"));
    let added = cli(&path, &["locks", "add", "locked@example.com", "--reason", "test"]);
    assert!(added.status.success(), "{added:?}");
    let p = Process::start(&path, addr).await;
    for _ in 0..8 {
        assert!(Mta::send(addr, &Msg::from_user("mallory@example.com")).await.accepted());
    }
    // A lock already in the list is logged, not enforced, in dry-run.
    assert!(Mta::send(addr, &Msg::from_user("locked@example.com")).await.accepted());
    let log = p.log_text();
    assert!(
        log.contains("identity is locked, would refuse [dry run, not done]"),
        "{log}"
    );
    assert!(log.contains("would tempfail [dry run, not done]"), "{log}");
    assert!(log.contains("would lock [dry run, not done]"), "{log}");
    assert!(
        log.contains("rule=per-minute") || log.contains("rule=\"per-minute\""),
        "{log}"
    );
    assert!(p.stop().await.success());
    let after = read_lock_list(&dir.path().join("locks.toml"));
    let ids: Vec<_> = after.entries.iter().map(|e| e.identity.as_str()).collect();
    assert_eq!(ids, ["locked@example.com"], "dry-run locks nothing new");
}

#[tokio::test]
async fn a_unix_socket_works_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("milter.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let path = write_config(
        dir.path(),
        &fixture("escalation.toml"),
        &format!("unix:{}", sock.display()),
    );
    let log = path.with_extension("log");
    let mut child = std::process::Command::new(binary())
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "unix socket answers", async || {
        tokio::net::UnixStream::connect(&sock).await.is_ok()
    })
    .await;
    let mut conn = indymilter_test::TestConnection::configure()
        .open_unix(&sock)
        .await
        .unwrap();
    conn.connect("localhost", sock.to_str().unwrap()).await.unwrap();
    conn.close().await.unwrap();
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(!sock.exists(), "socket removed at exit");
}

#[tokio::test]
async fn a_recipient_refusal_says_what_was_asked_and_when_it_would_fit() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[rule]]\nname = \"rcpts\"\ncount = \"recipients\"\nrate = \"3/1m\"\naction = \"reject\"\n";
    let (path, addr) = config_with_port(dir.path(), config);
    let p = Process::start(&path, addr).await;
    // Four recipients in one message against 3 a minute: nothing counted
    // yet (count=0), but the fourth asks for 4 and can never fit.
    let out = Mta::send(addr, &Msg::from_user("carol@example.com").rcpts(4)).await;
    assert!(matches!(out.rcpts[3], Status::Reject { .. }), "{out:?}");
    let log = p.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("rejected") && l.contains("rule=rcpts"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("count=0") && line.contains("requested=4"), "{line}");
    assert!(line.contains("retry_in=never"), "{line}");
    assert!(p.stop().await.success());
}

#[tokio::test]
async fn a_socket_in_a_missing_directory_is_a_configuration_error_and_exits_78() {
    // As the packaged configuration on a host without Postfix: the unit
    // must not restart the daemon in a loop (RestartPreventExitStatus=78).
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("spool/egress-milter");
    let sock = missing.join("milter.sock");
    let path = write_config(
        dir.path(),
        &fixture("escalation.toml"),
        &format!("unix:{}", sock.display()),
    );
    let out = cli(&path, &["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on unix:{}: the socket's directory {} does not exist: ",
            sock.display(),
            missing.display()
        )) && err.contains("see docs/install.md"),
        "{err}"
    );
    assert!(!missing.exists(), "nothing made");
}
