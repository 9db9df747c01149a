// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The binary's commands writing into a pipe whose reader is gone, as in
//! `egress-milter locks list --json | head -1` (issue 18): they end quietly,
//! with status 0, and never panic or loop.

use crate::common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `egress-milter ARGS` with standard output a pipe whose reading end
/// was closed before it starts, so that every write fails with `EPIPE`
/// (the end `head` leaves once it has its line); `stdin` is written to its
/// standard input. Gives up after `limit`: (exit code, stderr).
fn run_into_closed_pipe(args: &[&str], stdin: &str, limit: Duration) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run egress-milter");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("egress-milter {args:?} still runs {limit:?} after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config_arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn commands_that_print_end_quietly_when_the_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fixture("escalation.toml"), "inet:127.0.0.1:7025");
    // Far more than a pipe holds, so the output cannot all go out at once.
    let mut list = String::new();
    for i in 0..2000 {
        list.push_str(&format!(
            "[[lock]]\nidentity = \"user{i}@example.com\"\nsource = \"manual\"\nlocked_at = \"2026-11-23T10:00:00Z\"\nreason = \"phishing kit found in the webmail account, ticket {i}\"\n\n"
        ));
    }
    std::fs::write(dir.path().join("locks.toml"), list).unwrap();
    let c = config_arg(&config);
    for args in [
        &["--config", &c, "locks", "list", "--json"][..],
        &["--config", &c, "locks", "list"],
        &["--config", &c, "locks", "show", "user7@example.com"],
        &["--config", &c, "locks", "add", "mallory@example.com", "--reason", "r"],
        &["--config", &c, "check-config"],
        &["--config", &c, "passwd", "support"],
    ] {
        let (code, stderr) = run_into_closed_pipe(args, "a long enough password\n", Duration::from_secs(20));
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "{args:?}");
    }
    // The command that changed the list did so, though nobody read its answer.
    assert!(
        read_lock_list(&dir.path().join("locks.toml"))
            .get("mallory@example.com")
            .is_some()
    );
}

/// `top` redraws until interrupted: with its reader gone it stops at the
/// next screen instead of drawing into the void forever.
#[tokio::test]
async fn top_stops_when_the_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("{}\n[status]\nlisten = \"{status}\"\n", fixture("escalation.toml"));
    let path = write_config(dir.path(), &config, &format!("inet:{addr}"));
    let daemon = Process::start(&path, addr).await;
    eventually(Duration::from_secs(10), "status listener answers", async || {
        std::net::TcpStream::connect(status).is_ok()
    })
    .await;
    let c = config_arg(&path);
    let result = tokio::task::spawn_blocking(move || {
        let mut ends = Vec::new();
        for args in [
            vec!["--config", &c, "top", "--interval", "1"],
            vec!["--config", &c, "top", "--once", "--json"],
            vec!["--config", &c, "explain", "alice@example.com"],
            vec!["--config", &c, "report", "--since", "1h", "--csv"],
        ] {
            ends.push((args.join(" "), run_into_closed_pipe(&args, "", Duration::from_secs(10))));
        }
        ends
    })
    .await
    .unwrap();
    for (args, (code, stderr)) in result {
        assert!(!stderr.contains("panicked"), "{args}: {stderr}");
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "{args}");
    }
    assert!(daemon.stop().await.success());
}
