// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The status listener of the real binary: /metrics moved by exactly the
//! traffic sent, /healthz, and `top`, `explain`, `report`, `locks list
//! --json` against a daemon under load.

use crate::common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A daemon (real binary) with a status listener on a free port.
pub(crate) struct Daemon {
    pub(crate) process: Process,
    pub(crate) config: PathBuf,
    pub(crate) status: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
}

/// Starts the binary with `config` and a status listener; waits until the
/// listener answers.
pub(crate) async fn start(config: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("{config}\n[status]\nlisten = \"{status}\"\n");
    let path = write_config(dir.path(), &config, &format!("inet:{addr}"));
    let process = Process::start(&path, addr).await;
    eventually(Duration::from_secs(10), "status listener answers", async || {
        std::net::TcpStream::connect(status).is_ok()
    })
    .await;
    Daemon {
        process,
        config: path,
        status,
        dir,
    }
}

/// A plain HTTP/1.0 GET, independent of the CLI's client: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// The same with the daemon's local token (empty: none).
fn http_get_with(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Parses the exposition into (series, value), e.g.
/// (`egress_milter_refusals_total{rule="x",action="tempfail"}`, 2.0).
fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                series.to_string(),
                value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn metric(series: &[(String, f64)], name: &str) -> f64 {
    series
        .iter()
        .find(|(s, _)| s == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{name} not exported"))
}

fn run_cli(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "egress-milter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn msg(login: &str, rcpts: usize, queue_id: &str) -> Msg {
    let mut m = Msg::from_user(login).rcpts(rcpts);
    m.queue_id = queue_id.into();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_tools_follow_the_traffic_exactly() {
    let d = start(&fixture("escalation.toml")).await;
    let before = scrape(d.status);
    assert_eq!(metric(&before, "egress_milter_messages_seen_total"), 0.0);
    assert_eq!(http_get(d.status, "/healthz"), (200, "ok\n".into()));

    // alice: three accepted (2 recipients each), the fourth throttled at MAIL.
    let addr = d.process.addr;
    for i in 0..3 {
        assert!(
            Mta::send(addr, &msg("alice@example.com", 2, &format!("A{i}")))
                .await
                .accepted()
        );
    }
    let throttled = Mta::send(addr, &msg("alice@example.com", 2, "A3")).await;
    assert!(throttled.refusal().unwrap().starts_with("451 4.7.1"));

    // Load from 40 other identities while the tools run against the daemon.
    let load = tokio::spawn(async move {
        for i in 0..40 {
            let out = Mta::send(addr, &msg(&format!("load{i}@example.org"), 1, &format!("L{i}"))).await;
            assert!(out.accepted());
        }
    });
    let config = d.config.clone();
    let tools = tokio::task::spawn_blocking(move || {
        for _ in 0..5 {
            let top: serde_json::Value = serde_json::from_str(&run_cli(&config, &["top", "--once", "--json"])).unwrap();
            assert_eq!(top["identities"][0]["identity"], "alice@example.com", "{top}");
            run_cli(&config, &["explain", "alice@example.com"]);
            run_cli(&config, &["report", "--csv"]);
        }
    });
    load.await.unwrap();
    tools.await.unwrap();

    let after = scrape(d.status);
    assert_eq!(metric(&after, "egress_milter_messages_seen_total"), 44.0);
    assert_eq!(metric(&after, "egress_milter_messages_accepted_total"), 43.0);
    assert_eq!(metric(&after, "egress_milter_recipients_accepted_total"), 46.0);
    assert_eq!(
        metric(
            &after,
            "egress_milter_refusals_total{rule=\"per-minute\",action=\"tempfail\"}"
        ),
        1.0
    );
    assert_eq!(metric(&after, "egress_milter_tracked_identities"), 41.0);
    assert_eq!(
        metric(&after, "egress_milter_decision_seconds_count{stage=\"mail\"}"),
        44.0
    );
    assert_eq!(
        metric(&after, "egress_milter_decision_seconds_count{stage=\"eom\"}"),
        43.0
    );
    // One whole-message decision time per transaction that reached EOM,
    // at least as long as its EOM stage alone.
    assert_eq!(
        metric(&after, "egress_milter_decision_seconds_count{stage=\"message\"}"),
        43.0
    );
    assert!(
        metric(&after, "egress_milter_decision_seconds_sum{stage=\"message\"}")
            >= metric(&after, "egress_milter_decision_seconds_sum{stage=\"eom\"}")
    );
    assert_eq!(metric(&after, "egress_milter_locks_active"), 0.0);
    assert!(
        after.iter().all(|(s, _)| !s.contains("@")),
        "no series names an identity"
    );

    // top: alice first (4 tries), with her refusal; --once prints a table.
    let top: serde_json::Value =
        serde_json::from_str(&run_cli(&d.config, &["top", "--once", "--json", "-n", "3"])).unwrap();
    let first = &top["identities"][0];
    assert_eq!(first["identity"], "alice@example.com");
    assert_eq!(first["last_minute"]["messages"], 3);
    assert_eq!(first["last_minute"]["recipients"], 6);
    assert_eq!(first["last_minute"]["tempfailed"], 1);
    assert_eq!(first["locked"], false);
    assert_eq!(first["queue_ids"], serde_json::json!(["A2", "A1", "A0"]));
    assert_eq!(top["identities"].as_array().unwrap().len(), 3);
    let table = run_cli(&d.config, &["top", "--once"]);
    let row = table.lines().find(|l| l.starts_with("alice@example.com")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["alice@example.com", "3", "6", "1", "3", "6", "1", "0", "0", "no"]
    );

    // explain: every rule with its count and limit.
    let explain = run_cli(&d.config, &["explain", "Alice@Example.com"]);
    let rule = |name: &str| {
        explain
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{explain}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(rule("per-minute")[..4], ["per-minute", "tempfail", "3", "3"]);
    assert_eq!(
        rule("recipients-per-hour")[..4],
        ["recipients-per-hour", "reject", "6", "8"]
    );
    assert_eq!(
        rule("lock ")[..4],
        ["lock", "lock", "4", "6"],
        "lock rules count attempts"
    );
    assert!(explain.contains("lock:       not locked"), "{explain}");
    let json: serde_json::Value =
        serde_json::from_str(&run_cli(&d.config, &["explain", "alice@example.com", "--json"])).unwrap();
    assert_eq!(json["rules"][0]["window_secs"], 60);
    // Mail counted stops counting within two windows of it: the strict
    // count errs on the side of holding mail for longer, never shorter.
    let reset = json["rules"][0]["reset_in_secs"].as_u64().unwrap();
    assert!((1..=120).contains(&reset), "{reset}");

    // report: one CSV row per identity.
    let csv = run_cli(&d.config, &["report", "--since", "24h", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "domain,identity,messages,recipients,tempfailed,rejected,held,bounced,locked"
    );
    assert_eq!(lines.len(), 1 + 41);
    assert!(lines.contains(&"example.com,alice@example.com,3,6,1,0,0,0,no"), "{csv}");
    assert!(lines.contains(&"example.org,load7@example.org,1,1,0,0,0,0,no"), "{csv}");
    assert!(d.process.stop().await.success());
}

#[tokio::test]
async fn locks_and_reloads_show_in_metrics_and_json() {
    let d = start(&fixture("escalation.toml").replace(
        "[locks]",
        "[notify]\ncommand = [\"/bin/true\"]\n\n[locks]\npoll_interval = \"100ms\"",
    ))
    .await;
    for i in 0..7 {
        Mta::send(d.process.addr, &msg("mallory@example.com", 1, &format!("M{i}"))).await;
    }
    run_cli(&d.config, &["locks", "add", "eve@example.com", "--reason", "phished"]);
    eventually(Duration::from_secs(10), "both locks counted and written", async || {
        let m = scrape(d.status);
        metric(&m, "egress_milter_locks_active") == 2.0
            && metric(&m, "egress_milter_locks_added_total{source=\"manual\"}") == 1.0
            && metric(&m, "egress_milter_locks_pending_write") == 0.0
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the lock's notification command ran",
        async || {
            metric(
                &scrape(d.status),
                "egress_milter_notifications_total{outcome=\"command_ok\"}",
            ) == 1.0
        },
    )
    .await;
    let m = scrape(d.status);
    assert_eq!(metric(&m, "egress_milter_locks_added_total{source=\"auto\"}"), 1.0);
    assert_eq!(
        metric(&m, "egress_milter_notifications_total{outcome=\"duplicate\"}"),
        0.0,
        "one notification per lock, not per refused message"
    );
    assert_eq!(
        metric(&m, "egress_milter_refusals_total{rule=\"locked\",action=\"reject\"}"),
        1.0,
        "the seventh attempt, refused as locked"
    );
    assert_eq!(
        metric(
            &m,
            "egress_milter_refusals_total{rule=\"per-minute\",action=\"tempfail\"}"
        ),
        3.0
    );

    let locks: serde_json::Value = serde_json::from_str(&run_cli(&d.config, &["locks", "list", "--json"])).unwrap();
    let lock = |id: &str| {
        locks
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["identity"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {locks}"))
            .clone()
    };
    assert_eq!(locks.as_array().unwrap().len(), 2);
    assert_eq!(lock("mallory@example.com")["source"], "auto");
    assert_eq!(lock("mallory@example.com")["rule"], "lock");
    assert_eq!(lock("eve@example.com")["source"], "manual");
    assert_eq!(lock("eve@example.com")["state"], "locked");
    assert_eq!(lock("eve@example.com")["reason"], "phished");

    let explain = run_cli(&d.config, &["explain", "mallory@example.com"]);
    assert!(explain.contains("lock:       locked since"), "{explain}");
    let top: serde_json::Value = serde_json::from_str(&run_cli(&d.config, &["top", "--once", "--json"])).unwrap();
    assert_eq!(top["identities"][0]["identity"], "mallory@example.com");
    assert_eq!(top["identities"][0]["locked"], true);

    d.process.signal("HUP");
    eventually(Duration::from_secs(10), "reload counted", async || {
        metric(&scrape(d.status), "egress_milter_config_reloads_total{result=\"ok\"}") == 1.0
    })
    .await;
    std::fs::write(&d.config, "mode = \"sideways\"\n").unwrap();
    d.process.signal("HUP");
    eventually(Duration::from_secs(10), "failed reload counted", async || {
        metric(
            &scrape(d.status),
            "egress_milter_config_reloads_total{result=\"failed\"}",
        ) == 1.0
    })
    .await;
    assert!(d.process.stop().await.success());
}

#[tokio::test]
async fn healthz_says_why_when_the_lock_list_is_corrupt() {
    let d = start(&fixture("escalation.toml").replace("[locks]", "[locks]\npoll_interval = \"100ms\"")).await;
    let lock_list = d.dir.path().join("locks.toml");
    std::fs::write(&lock_list, "[[lock]]\nidentity = \"half-written").unwrap();
    eventually(Duration::from_secs(10), "healthz 503", async || {
        http_get(d.status, "/healthz").0 == 503
    })
    .await;
    let (_, why) = http_get(d.status, "/healthz");
    assert!(
        why.contains("does not parse") && why.contains("last good list"),
        "{why}"
    );
    assert_eq!(metric(&scrape(d.status), "egress_milter_lock_list_corrupt"), 1.0);
    std::fs::write(&lock_list, "").unwrap();
    eventually(Duration::from_secs(10), "healthz 200 again", async || {
        http_get(d.status, "/healthz") == (200, "ok\n".into())
    })
    .await;
    // Bad requests get a reason, not a crash (once authenticated: without
    // the token they get 401 and nothing else).
    assert_eq!(http_get(d.status, "/api/identities?top=0").0, 401);
    let token = std::fs::read_to_string(d.dir.path().join("status.token")).unwrap();
    assert_eq!(http_get_with(d.status, "/api/identities?top=0", token.trim()).0, 400);
    assert_eq!(http_get_with(d.status, "/api/report?since=3d", token.trim()).0, 400);
    assert_eq!(http_get_with(d.status, "/nowhere", token.trim()).0, 404);
    assert!(d.process.stop().await.success());
}

#[tokio::test]
async fn tools_name_the_listener_when_it_is_off_or_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let off = write_config(dir.path(), &fixture("escalation.toml"), "inet:127.0.0.1:1");
    let out = cli(&off, &["top", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("status listener is off") && err.contains("[status] listen"),
        "{err}"
    );

    let port = free_port();
    let unreachable = write_config(
        dir.path(),
        &format!(
            "{}\n[status]\nlisten = \"127.0.0.1:{port}\"\n",
            fixture("escalation.toml")
        ),
        "inet:127.0.0.1:1",
    );
    let out = cli(&unreachable, &["explain", "a@example.com"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port} (status.listen)")) && err.contains("is egress-milter running?"),
        "{err}"
    );
}

#[tokio::test]
async fn dry_run_counts_what_it_would_have_done() {
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = Milter::spawn(&format!(
        "{}\n[status]\nlisten = \"{status}\"\n",
        fixture("dry-run.toml")
    ))
    .await;
    eventually(Duration::from_secs(10), "status listener answers", async || {
        std::net::TcpStream::connect(status).is_ok()
    })
    .await;
    for i in 0..8 {
        assert!(
            Mta::send(m.addr, &msg("mallory@example.com", 1, &format!("D{i}")))
                .await
                .accepted()
        );
    }
    let s = tokio::task::spawn_blocking(move || scrape(status)).await.unwrap();
    // Messages 4-8 exceed "per-minute" at end of message, 4-6 also at MAIL;
    // at MAIL, 7 and 8 exceed the lock rule, the more severe.
    assert_eq!(
        metric(
            &s,
            "egress_milter_not_enforced_total{rule=\"per-minute\",action=\"tempfail\"}"
        ),
        8.0
    );
    assert_eq!(
        metric(&s, "egress_milter_not_enforced_total{rule=\"lock\",action=\"lock\"}"),
        2.0
    );
    assert_eq!(metric(&s, "egress_milter_messages_accepted_total"), 8.0);
    assert!(
        !s.iter()
            .any(|(series, _)| series.starts_with("egress_milter_refusals_total"))
    );
    assert_eq!(metric(&s, "egress_milter_locks_active"), 0.0);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_bounds_connections_headers_and_slow_clients() {
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = Milter::spawn(&format!(
        "{}\n[status]\nlisten = \"{status}\"\nmax_connections = 2\n",
        fixture("escalation.toml")
    ))
    .await;
    eventually(Duration::from_secs(10), "status listener answers", async || {
        std::net::TcpStream::connect(status).is_ok_and(|mut s| {
            let _ = write!(s, "GET /healthz HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            s.read_to_string(&mut out).is_ok() && out.ends_with("ok\n")
        })
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let read_all = |s: &mut std::net::TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        };
        // A request head over 8 KiB is refused.
        let mut s = std::net::TcpStream::connect(status).unwrap();
        let _ = write!(s, "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(20_000));
        let answer = read_all(&mut s);
        assert!(!answer.contains("200 OK"), "{answer}");

        // Two idle connections use up the limit: a third is closed at once.
        let idle1 = std::net::TcpStream::connect(status).unwrap();
        let idle2 = std::net::TcpStream::connect(status).unwrap();
        let mut third = std::net::TcpStream::connect(status).unwrap();
        let _ = write!(third, "GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(read_all(&mut third), "", "over the limit: closed without an answer");
        drop(idle2);

        // A client that never finishes its request head is dropped (after 5 s).
        let mut slow = idle1;
        let _ = write!(slow, "GET /heal");
        let answer = read_all(&mut slow);
        assert!(!answer.contains("200 OK"), "{answer}");
    })
    .await
    .unwrap();
    // Both slots are free again.
    let (code, body) = tokio::task::spawn_blocking(move || http_get(status, "/healthz"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    m.shutdown().await;
}

#[tokio::test]
async fn top_redraws_until_interrupted() {
    let d = start(&fixture("escalation.toml")).await;
    assert!(
        Mta::send(d.process.addr, &msg("alice@example.com", 1, "T1"))
            .await
            .accepted()
    );
    let mut child = std::process::Command::new(binary())
        .arg("--config")
        .arg(&d.config)
        .args(["top", "--interval", "1", "-n", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let screens = tokio::task::spawn_blocking(move || {
        // Read until two full screens are drawn (top writes one every second).
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while started.elapsed() < Duration::from_secs(20) {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.matches("\x1b[H\x1b[2J").count() >= 3 {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let frames: Vec<&str> = screens.split("\x1b[H\x1b[2J").filter(|f| !f.is_empty()).collect();
    assert!(frames.len() >= 2, "{screens:?}");
    for frame in &frames[..2] {
        assert!(frame.starts_with("egress-milter top  "), "{frame:?}");
        assert!(frame.contains("\nalice@example.com "), "{frame:?}");
    }
    assert!(d.process.stop().await.success());
}

/// In a fleet, `top` on one host sums every host's activity, and `explain`
/// reads the shared counts, whichever host the mail went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_and_explain_on_any_host_show_the_whole_fleet() {
    let Some(redis) = crate::common::redis::RedisServer::start() else {
        return;
    };
    let config = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"fleet-top:\"\nfleet_size = 2\n",
        fixture("escalation.toml"),
        redis.url()
    );
    let (a, b) = (start(&config).await, start(&config).await);
    for (i, host) in [&a, &b, &a].into_iter().enumerate() {
        assert!(
            Mta::send(host.process.addr, &msg("alice@example.com", 2, &format!("A{i}")))
                .await
                .accepted()
        );
    }
    assert!(
        Mta::send(b.process.addr, &msg("bob@example.com", 1, "B0"))
            .await
            .accepted()
    );
    // B's list reaches Redis within its publishing interval (5 s).
    eventually(Duration::from_secs(12), "A's top shows B's traffic", async || {
        let top: serde_json::Value = serde_json::from_str(&run_cli(&a.config, &["top", "--once", "--json"])).unwrap();
        let alice = top["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["identity"] == "alice@example.com")
            .cloned();
        top["hosts"] == 2
            && alice.is_some_and(|r| r["last_minute"]["messages"] == 3 && r["last_minute"]["recipients"] == 6)
    })
    .await;
    let table = run_cli(&a.config, &["top", "--once"]);
    assert!(
        table.contains("fleet of 2 hosts") && table.contains("bob@example.com"),
        "{table}"
    );
    // escalation.toml: alice may send 3 messages a minute; the third went
    // through A, yet B's explain counts all three.
    let explain: serde_json::Value =
        serde_json::from_str(&run_cli(&b.config, &["explain", "alice@example.com", "--json"])).unwrap();
    let counts: Vec<_> = explain["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].clone())
        .collect();
    assert!(
        counts.contains(&serde_json::json!(3)),
        "B's explain shows the fleet's 3 messages: {explain}"
    );
    let _ = (&a.dir, &b.dir);
}
