// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The review desk of the real binary over HTTP: who may read and write,
//! CSRF and origin checks (refused means nothing changed), the actions and
//! their audit trail, bulk unlock with a dry run, domain and network locks
//! on live traffic, and `reset`.

use crate::common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

struct Desk {
    process: Process,
    config: PathBuf,
    status: SocketAddr,
    dir: tempfile::TempDir,
}

impl Desk {
    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("status.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn lock_list(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("locks.toml")).unwrap_or_default()
    }

    fn origin(&self) -> String {
        format!("http://{}", self.status)
    }
}

async fn start() -> Desk {
    start_with(tempfile::tempdir().unwrap(), "").await
}

/// The desk with `status` (more `[status]` keys) in the configuration, in `dir`.
async fn start_with(dir: tempfile::TempDir, status_keys: &str) -> Desk {
    let users = dir.path().join("users");
    let hash = egress_milter::ops::auth::hash_password(PASSWORD).unwrap();
    std::fs::write(&users, format!("# review desk users\nalice:{hash}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "{}\n[status]\nlisten = \"{status}\"\nusers_file = \"{}\"\n{status_keys}",
        fixture("escalation.toml").replace("[locks]", "[locks]\npoll_interval = \"100ms\""),
        users.display()
    );
    let path = write_config(dir.path(), &config, &format!("inet:{addr}"));
    let process = Process::start(&path, addr).await;
    eventually(Duration::from_secs(10), "status listener answers", async || {
        std::net::TcpStream::connect(status).is_ok()
    })
    .await;
    Desk {
        process,
        config: path,
        status,
        dir,
    }
}

/// One HTTP/1.0 request: (status, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
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

/// Logs in through the form as a browser would: the session cookie.
fn login(d: &Desk) -> String {
    let origin = d.origin();
    let (status, head, body) = http(
        d.status,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
        ],
        &format!("user=alice&password={}", PASSWORD.replace(' ', "+")),
    );
    assert_eq!(status, 303, "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

fn csrf_of(d: &Desk, cookie: &str) -> String {
    let (status, _, body) = http(d.status, "GET", "/api/session", &[("Cookie", cookie)], "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["user"], "alice");
    v["csrf"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_data_needs_a_login_and_aggregates_do_not() {
    let d = start().await;
    run_cli(
        &d.config,
        &["locks", "add", "bob@example.com", "--reason", "phishing kit"],
    );
    let token = format!("Bearer {}", d.token());
    for path in [
        "/api/locks",
        "/api/identities",
        "/api/identities/bob%40example.com",
        "/api/report",
        "/api/locks/bob%40example.com",
    ] {
        let (status, head, body) = http(d.status, "GET", path, &[], "");
        assert_eq!(status, 401, "{path}: {body}");
        assert!(head.to_lowercase().contains("www-authenticate: basic"), "{head}");
        assert!(!body.contains("bob@example.com"), "{path} leaks: {body}");
        let wrong = basic("alice", "guess");
        assert_eq!(
            http(d.status, "GET", path, &[("Authorization", &wrong)], "").0,
            401,
            "{path}"
        );
        let forged = "Bearer 0000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(
            http(d.status, "GET", path, &[("Authorization", forged)], "").0,
            401,
            "{path}"
        );
        assert_eq!(
            http(d.status, "GET", path, &[("Authorization", &token)], "").0,
            200,
            "{path}"
        );
    }
    let good = basic("alice", PASSWORD);
    let (status, _, body) = http(d.status, "GET", "/api/locks", &[("Authorization", &good)], "");
    assert_eq!(status, 200);
    assert!(body.contains("phishing kit"), "{body}");
    // The page without a login is the login form, with no data in it.
    let (status, head, body) = http(d.status, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("action=\"/login\"") && !body.contains("bob@"), "{body}");
    assert!(head.to_lowercase().contains("x-frame-options: deny"), "{head}");
    assert!(head.to_lowercase().contains("content-security-policy"), "{head}");
    // Aggregates stay open on loopback.
    assert_eq!(http(d.status, "GET", "/metrics", &[], "").0, 200);
    assert_eq!(http(d.status, "GET", "/healthz", &[], "").0, 200);
    // A wrong password on the form: refused, and no cookie.
    let origin = d.origin();
    let (status, head, body) = http(
        d.status,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
        ],
        "user=alice&password=nope",
    );
    assert_eq!(status, 401, "{body}");
    assert!(!head.to_lowercase().contains("set-cookie"), "{head}");
    assert!(body.contains("Wrong user name or password"), "{body}");
    // A login form posted from another site: refused.
    let (status, head, _) = http(
        d.status,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
        ],
        &format!("user=alice&password={}", PASSWORD.replace(' ', "+")),
    );
    assert_eq!(status, 401);
    assert!(!head.to_lowercase().contains("set-cookie"), "{head}");
    // The CLI reads the token and keeps working.
    assert!(run_cli(&d.config, &["explain", "bob@example.com"]).contains("bob@example.com"));
    // Bad requests still get a reason once authenticated.
    assert_eq!(
        http(
            d.status,
            "GET",
            "/api/identities?top=0",
            &[("Authorization", &token)],
            ""
        )
        .0,
        400
    );
    assert!(d.process.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_the_csrf_token_or_from_another_origin_change_nothing() {
    let d = start().await;
    run_cli(
        &d.config,
        &["locks", "add", "bob@example.com", "--reason", "phishing kit"],
    );
    let before = d.lock_list();
    let cookie = login(&d);
    let csrf = csrf_of(&d, &cookie);
    let origin = d.origin();
    let body = r#"{"identity":"bob@example.com","reason":"customer called"}"#;
    let json = ("Content-Type", "application/json");
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);
    let attempts: Vec<Attempt> = vec![
        ("no token", vec![("Cookie", &cookie), json, ("Origin", &origin)], 403),
        (
            "wrong token",
            vec![("Cookie", &cookie), json, ("Origin", &origin), ("X-CSRF-Token", "00ff")],
            403,
        ),
        (
            "other origin",
            vec![
                ("Cookie", &cookie),
                json,
                ("Origin", "http://evil.example"),
                ("X-CSRF-Token", &csrf),
            ],
            403,
        ),
        (
            "other referer",
            vec![
                ("Cookie", &cookie),
                json,
                ("Referer", "http://evil.example/x"),
                ("X-CSRF-Token", &csrf),
            ],
            403,
        ),
        (
            "no login",
            vec![json, ("Origin", &origin), ("X-CSRF-Token", &csrf)],
            401,
        ),
        // What a forged <form> can send: no custom header, a form body.
        (
            "forged form",
            vec![
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", "http://evil.example"),
            ],
            403,
        ),
        (
            "form body",
            vec![
                ("Cookie", &cookie),
                ("Content-Type", "text/plain"),
                ("Origin", &origin),
                ("X-CSRF-Token", &csrf),
            ],
            415,
        ),
    ];
    for (what, headers, want) in attempts {
        let (status, _, answer) = http(d.status, "POST", "/api/actions/unlock", &headers, body);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(d.lock_list(), before, "{what} changed the lock list");
    }
    // Without a reason: refused too.
    let headers = [
        ("Cookie", cookie.as_str()),
        json,
        ("Origin", &origin),
        ("X-CSRF-Token", &csrf),
    ];
    let (status, _, _) = http(
        d.status,
        "POST",
        "/api/actions/unlock",
        &headers,
        r#"{"identity":"bob@example.com","reason":" "}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(d.lock_list(), before);
    // The real thing.
    let (status, _, answer) = http(d.status, "POST", "/api/actions/unlock", &headers, body);
    assert_eq!(status, 200, "{answer}");
    let list = read_lock_list(&d.dir.path().join("locks.toml"));
    let bob = list.get("bob@example.com").unwrap();
    assert!(!bob.is_active(std::time::SystemTime::now()), "unlocked");
    let event = bob.history.last().unwrap();
    assert_eq!(
        (event.action.as_str(), event.by.as_str(), event.reason.as_str()),
        ("unlock", "alice", "customer called")
    );
    // Mail flows again at once.
    assert!(
        Mta::send(d.process.addr, &Msg::from_user("bob@example.com"))
            .await
            .accepted()
    );
    // Lock again with an expiry, extend, reset: each in the history.
    for (action, body) in [
        (
            "lock",
            r#"{"identity":"bob@example.com","reason":"again","expires":"2h"}"#,
        ),
        (
            "extend",
            r#"{"identity":"bob@example.com","reason":"longer","expires":"7d"}"#,
        ),
        ("reset", r#"{"identity":"bob@example.com","reason":"fresh start"}"#),
    ] {
        let (status, _, answer) = http(d.status, "POST", &format!("/api/actions/{action}"), &headers, body);
        assert_eq!(status, 200, "{action}: {answer}");
    }
    let list = read_lock_list(&d.dir.path().join("locks.toml"));
    let bob = list.get("bob@example.com").unwrap();
    let actions: Vec<_> = bob.history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["lock", "unlock", "lock", "extend", "reset"]);
    assert_eq!(bob.previous_locks, 1);
    assert!(
        Mta::send(d.process.addr, &Msg::from_user("bob@example.com"))
            .await
            .refusal()
            .is_some()
    );
    // Basic auth (curl) needs the CSRF token too.
    let good = basic("alice", PASSWORD);
    let (status, _, _) = http(
        d.status,
        "POST",
        "/api/actions/unlock",
        &[("Authorization", &good), json],
        body,
    );
    assert_eq!(status, 403);
    // An audit line per action, refused ones included.
    let log = d.process.log_text();
    assert!(log.contains("admin action refused"), "{log}");
    let done = log
        .lines()
        .filter(|l| l.contains("admin action") && !l.contains("refused"))
        .count();
    assert_eq!(done, 4, "{log}");
    assert!(log.contains("customer called"), "{log}");
    assert!(d.process.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_and_network_locks_refuse_every_message_they_cover() {
    let d = start().await;
    run_cli(
        &d.config,
        &["locks", "add", "@Example.COM", "--reason", "compromised tenant"],
    );
    run_cli(
        &d.config,
        &["locks", "add", "203.0.113.77/24", "--reason", "botnet range"],
    );
    let list = run_cli(&d.config, &["locks", "list"]);
    assert!(
        list.contains("@example.com") && list.contains("203.0.113.0/24"),
        "{list}"
    );
    let addr = d.process.addr;
    // A new identity each time, so that no throttle answers for the lock.
    let mut n = 0;
    eventually(Duration::from_secs(10), "the daemon sees the locks", async || {
        n += 1;
        Mta::send(addr, &Msg::from_user(&format!("carol{n}@example.com")))
            .await
            .refusal()
            .is_some_and(|r| r.starts_with("550"))
    })
    .await;
    let refused = Mta::send(addr, &Msg::from_user("dave@example.com")).await;
    assert!(
        refused.refusal().is_some_and(|r| r.starts_with("550 5.7.1")),
        "{refused:?}"
    );
    assert!(Mta::send(addr, &Msg::from_user("dave@example.org")).await.accepted());
    assert!(
        Mta::send(addr, &Msg::from_user("dave@sub.example.com"))
            .await
            .accepted()
    );
    let mut from_net = Msg::from_user("erin@example.org");
    from_net.client = [203, 0, 113, 200];
    assert!(
        Mta::send(addr, &from_net).await.refusal().is_some(),
        "client in a locked network"
    );
    from_net.client = [203, 0, 114, 1];
    assert!(Mta::send(addr, &from_net).await.accepted());
    // The network lock lifted: mail from it flows.
    run_cli(
        &d.config,
        &["locks", "unlock", "203.0.113.0/24", "--reason", "cleaned up"],
    );
    from_net.client = [203, 0, 113, 200];
    eventually(Duration::from_secs(10), "network unlocked", async || {
        Mta::send(addr, &from_net).await.accepted()
    })
    .await;
    let bad = cli(&d.config, &["locks", "add", "10.0.0.0/33", "--reason", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a network"));
    assert!(d.process.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_unlock_lists_first_then_releases_only_what_the_filter_matches() {
    let d = start().await;
    let addr = d.process.addr;
    // `reset` clears the counters, not the lock: alice is throttled after
    // three messages a minute, and sends again after the reset.
    for _ in 0..3 {
        assert!(Mta::send(addr, &Msg::from_user("alice@example.org")).await.accepted());
    }
    assert!(
        Mta::send(addr, &Msg::from_user("alice@example.org"))
            .await
            .refusal()
            .unwrap()
            .starts_with("451")
    );
    assert!(run_cli(&d.config, &["reset", "alice@example.org", "--reason", "VIP"]).contains("cleared the counters"));
    assert!(Mta::send(addr, &Msg::from_user("alice@example.org")).await.accepted());
    // Three identities locked by a lock rule, as the daemon writes them, one by hand.
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut text = String::new();
    for who in ["a1@example.org", "a2@example.org", "b1@example.net"] {
        text.push_str(&format!(
            "[[lock]]\nidentity = \"{who}\"\nsource = \"auto\"\nlocked_at = \"{now}\"\nreason = \"rule lock exceeded\"\nrule = \"lock\"\n\n"
        ));
    }
    std::fs::write(d.dir.path().join("locks.toml"), text).unwrap();
    run_cli(&d.config, &["locks", "add", "m1@example.org", "--reason", "by hand"]);
    // Asked through the API, which does not count as mail.
    let token = format!("Bearer {}", d.token());
    eventually(Duration::from_secs(10), "the daemon sees the locks", async || {
        let (_, _, body) = http(d.status, "GET", "/api/locks", &[("Authorization", &token)], "");
        body.contains("a1@example.org") && body.contains("m1@example.org")
    })
    .await;
    let before = d.lock_list();
    let dry = run_cli(
        &d.config,
        &[
            "locks",
            "unlock-matching",
            "--rule",
            "lock",
            "--identity",
            "*@example.org",
            "--reason",
            "bad rule",
            "--dry-run",
        ],
    );
    assert!(
        dry.contains("would unlock a1@example.org") && dry.contains("would unlock a2@example.org"),
        "{dry}"
    );
    assert!(!dry.contains("b1@") && !dry.contains("m1@"), "{dry}");
    assert_eq!(d.lock_list(), before, "a dry run changes nothing");
    let none = cli(&d.config, &["locks", "unlock-matching", "--reason", "oops"]);
    assert!(!none.status.success(), "no filter, no --all: refused");
    assert!(
        Mta::send(addr, &Msg::from_user("a1@example.org"))
            .await
            .refusal()
            .is_some(),
        "still locked"
    );
    let done = run_cli(
        &d.config,
        &[
            "locks",
            "unlock-matching",
            "--rule",
            "lock",
            "--identity",
            "*@example.org",
            "--reason",
            "bad rule",
        ],
    );
    assert!(done.contains("2 lock(s) unlocked"), "{done}");
    eventually(Duration::from_secs(10), "a1 sends again", async || {
        Mta::send(addr, &Msg::from_user("a1@example.org")).await.accepted()
    })
    .await;
    assert!(
        Mta::send(addr, &Msg::from_user("b1@example.net"))
            .await
            .refusal()
            .is_some()
    );
    assert!(
        Mta::send(addr, &Msg::from_user("m1@example.org"))
            .await
            .refusal()
            .is_some()
    );
    // The same through the API, as the page does it, with a dry run.
    let headers = [("Authorization", token.as_str()), ("Content-Type", "application/json")];
    let body = r#"{"reason":"bad rule","filter":{"source":"manual"},"dry_run":true}"#;
    let (status, _, answer) = http(d.status, "POST", "/api/actions/bulk-unlock", &headers, body);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["locks"][0]["identity"], "m1@example.org");
    assert!(
        Mta::send(addr, &Msg::from_user("m1@example.org"))
            .await
            .refusal()
            .is_some()
    );
    assert!(d.process.stop().await.success());
}

/// Issue 18, 1: with `trusted_proxies = ["127.0.0.1"]` any local process
/// (user `nobody` with curl) could send `X-Remote-User` and act as anyone.
/// A proxy on this host must now also send the secret of
/// `proxy_secret_file`; without it such a configuration is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_cannot_forge_the_proxy_user_header() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let forged = "[status]\ntrusted_proxies = [\"127.0.0.1\"]\n";
    // A proxy on this host without a secret: refused, as every config error.
    let config = write_config(
        dir.path(),
        &format!("{}\n{forged}", fixture("escalation.toml")),
        "inet:127.0.0.1:7025",
    );
    for args in [&["check-config"][..], &["run"]] {
        let out = cli(&config, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {err}");
        assert!(
            err.contains("key \"status.trusted_proxies[0]\": 127.0.0.1 is a loopback address")
                && err.contains("status.proxy_secret_file"),
            "{err}"
        );
    }
    // A secret other users can read: refused, naming the file.
    let secret_file = dir.path().join("proxy.secret");
    let secret = "3f1c0a9e5b7d24c86e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keys = format!(
        "trusted_proxies = [\"127.0.0.1\"]\nproxy_secret_file = \"{}\"\n",
        secret_file.display()
    );
    let with_secret = write_config(
        dir.path(),
        &format!("{}\n[status]\n{keys}", fixture("escalation.toml")),
        "inet:127.0.0.1:7025",
    );
    let out = cli(&with_secret, &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("key \"status.proxy_secret_file\"")
            && err.contains(&format!(
                "{} has permissions for other users (mode 0644)",
                secret_file.display()
            )),
        "{err}"
    );
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = cli(&with_secret, &["check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let d = start_with(dir, &keys).await;
    run_cli(
        &d.config,
        &["locks", "add", "alice@example.com", "--reason", "phishing kit"],
    );
    let token = format!("Bearer {}", d.token());
    eventually(Duration::from_secs(10), "the daemon has the lock", async || {
        http(d.status, "GET", "/api/locks", &[("Authorization", &token)], "")
            .2
            .contains("phishing kit")
    })
    .await;
    let user = ("X-Remote-User", "support");
    // What `nobody` would send from this host: no secret, or a guess.
    for headers in [
        vec![user],
        vec![user, ("X-Egress-Proxy-Secret", "")],
        vec![
            user,
            (
                "X-Egress-Proxy-Secret",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ],
        vec![user, ("X-Egress-Proxy-Secret", &secret[..40])],
        // Two copies of the user: which one the proxy set cannot be told.
        vec![user, ("X-Remote-User", "alice"), ("X-Egress-Proxy-Secret", secret)],
    ] {
        for path in ["/api/locks", "/api/session", "/api/locks/alice%40example.com"] {
            let (status, _, body) = http(d.status, "GET", path, &headers, "");
            assert_eq!(status, 401, "{path} {headers:?}: {body}");
            assert!(!body.contains("phishing kit"), "{path} leaks: {body}");
        }
        let origin = d.origin();
        let mut write = headers.clone();
        write.extend([("Content-Type", "application/json"), ("Origin", origin.as_str())]);
        let (status, _, body) = http(
            d.status,
            "POST",
            "/api/actions/unlock",
            &write,
            r#"{"identity": "alice@example.com", "reason": "forged"}"#,
        );
        assert_eq!(status, 401, "{headers:?}: {body}");
    }
    assert!(d.lock_list().contains("phishing kit") && !d.lock_list().contains("forged"));
    assert!(
        d.process
            .log_text()
            .contains("request refused: X-Remote-User came without the proxy's secret"),
        "{}",
        d.process.log_text()
    );
    assert!(!d.process.log_text().contains(secret), "the secret is logged");

    // The proxy, which knows the secret: the user it names is believed.
    let proxy = [user, ("X-Egress-Proxy-Secret", secret)];
    let (status, _, body) = http(d.status, "GET", "/api/locks", &proxy, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("phishing kit"), "{body}");
    let (status, _, body) = http(d.status, "GET", "/api/session", &proxy, "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["user"], "proxy:support");
    let csrf = v["csrf"].as_str().unwrap().to_string();
    let origin = d.origin();
    let (status, _, body) = http(
        d.status,
        "POST",
        "/api/actions/unlock",
        &[
            user,
            ("X-Egress-Proxy-Secret", secret),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "application/json"),
            ("Origin", &origin),
        ],
        r#"{"identity": "alice@example.com", "reason": "customer confirmed"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(d.lock_list().contains("by = \"proxy:support\""), "{}", d.lock_list());

    // A new secret, read at the reload; the old one no longer works.
    let renewed = "b".repeat(40);
    std::fs::write(&secret_file, format!("{renewed}\r\n")).unwrap();
    d.process.signal("HUP");
    let new = [user, ("X-Egress-Proxy-Secret", renewed.as_str())];
    eventually(Duration::from_secs(10), "the new secret applies", async || {
        http(d.status, "GET", "/api/locks", &new, "").0 == 200
    })
    .await;
    assert_eq!(http(d.status, "GET", "/api/locks", &proxy, "").0, 401);
    // A reload with a readable secret is refused: the running one stays.
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o604)).unwrap();
    d.process.signal("HUP");
    eventually(Duration::from_secs(10), "the bad reload logged", async || {
        d.process
            .log_text()
            .contains("configuration not reloaded, keeping the running one")
    })
    .await;
    assert_eq!(http(d.status, "GET", "/api/locks", &new, "").0, 200);
    assert!(d.process.stop().await.success());
}
