// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The review desk in a real browser, behind a real Postfix: an account is
//! locked by its own traffic, a support person opens the page in headless
//! Chromium, logs in, sees the lock with its reason, presses Unlock with a
//! reason, and the account's next message is delivered by Postfix.
//!
//! Chromium is driven through chromedriver's WebDriver HTTP API with plain
//! HTTP/1.1 requests from this file: no Node, no extra crate. Screenshots
//! go to `$EGRESS_MILTER_ARTIFACTS` (default `target/desk-artifacts/`).

use crate::egress::{EgressMilter, MilterConfig};
use crate::harness::skip_unless_live;
use crate::ports::free_port;
use crate::scenarios::{Live, WAIT, assert_accepted, push_until_locked};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const USER: &str = "support";
const PASSWORD: &str = "desk-password-1";

/// Where the screenshots of a run are kept.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("EGRESS_MILTER_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/desk-artifacts"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// One HTTP/1.1 request to chromedriver: the JSON answer's `value`.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("chromedriver: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open whatever the request says:
    // read the head, then exactly the body it announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let body = loop {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(n > 0, "{method} {path}: connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body = &raw[end + 4..];
        match length {
            Some(len) if body.len() >= len => break String::from_utf8_lossy(&body[..len]).into_owned(),
            Some(_) => continue,
            None if head.contains("transfer-encoding: chunked") => {
                let text = String::from_utf8_lossy(body).into_owned();
                if text.contains("\r\n0\r\n") {
                    break dechunk(&text);
                }
            }
            None => panic!("{method} {path}: no Content-Length in {head}"),
        }
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
    if v["value"].get("error").is_some() {
        panic!("{method} {path}: {}", v["value"]);
    }
    v["value"].clone()
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// chromedriver and one headless Chromium session; both ended on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: run milter-tests/install-deps.sh as root (it installs chromium and chromium-driver)"
            );
        }
        let port = free_port().expect("a free port for chromedriver");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new",
            // As root Chromium needs this; the page is our own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let v = wd(port, "POST", "/session", Some(caps));
        browser.session = v["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(self.port, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    fn text_of(&self, css: &str) -> String {
        let js = format!("const e = document.querySelector({css:?}); return e ? e.innerText : '';");
        self.script(&js).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `css` contains `needle`.
    fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let t = self.text_of(css);
            if t.contains(needle) {
                return t;
            }
            assert!(
                started.elapsed() < WAIT,
                "{css} never showed {needle:?}; it shows {t:?}\npage: {}",
                self.text_of("body")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = base64_decode(self.call("GET", "/screenshot", None).as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut s| {
                write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    self.session
                )?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut sink = Vec::new();
                s.read_to_end(&mut sink).map(|_| ())
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The small limits with the desk on a free port and one user (`USER`,
/// `PASSWORD`): the users file's directory (kept while the test runs), the
/// listener's address and the configuration.
fn desk_config() -> (tempfile::TempDir, String, MilterConfig) {
    let users = tempfile::tempdir().expect("temp dir");
    let users_file = users.path().join("users");
    let hash = egress_milter::ops::auth::hash_password(PASSWORD).expect("hash");
    std::fs::write(&users_file, format!("{USER}:{hash}\n")).expect("write the users file");
    let status = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let config = MilterConfig::fixture("small-limits.toml")
        .set("status.listen", status.as_str())
        .set("status.users_file", users_file.display().to_string())
        .set("locks.poll_interval", "200ms");
    (users, status, config)
}

#[test]
fn a_support_person_releases_a_lock_from_the_browser_and_mail_flows() {
    if skip_unless_live() {
        return;
    }
    let (_users, status, config) = desk_config();
    let live = Live::start(config);
    let mallory = "mallory@example.com";
    push_until_locked(&live, mallory);
    live.milter
        .wait_for_lock(mallory, WAIT)
        .expect("mallory in the lock list");

    let browser = Browser::start();
    let url = format!("http://{status}/");
    browser.go(&url);
    // Not logged in: the login form, and no lock data.
    let login = browser.wait_for_text("body", "Log in");
    assert!(!login.contains(mallory), "{login}");
    browser.type_into("#user", USER);
    browser.type_into("#password", PASSWORD);
    browser.click("#login-button");
    // The lock, with its reason, on the desk.
    let table = browser.wait_for_text("#locks", mallory);
    assert!(table.contains("rule \"lock-messages\" exceeded"), "{table}");
    browser.wait_for_text("#who", &format!("logged in as {USER}"));
    browser.click("#locks tbody tr");
    browser.wait_for_text("#detail-title", mallory);
    browser.wait_for_text("#rules", "lock-messages");
    browser.screenshot("review.png");

    // Unlock without a reason: refused on the page, nothing changed.
    browser.click("#unlock");
    browser.wait_for_text("#status", "Give a reason");
    assert!(
        live.milter
            .locks()
            .get(mallory)
            .is_some_and(|e| e.is_active(std::time::SystemTime::now()))
    );
    browser.type_into("#act-reason", "customer confirmed: password reset, no hijack");
    browser.click("#unlock");
    browser.wait_for_text("#status", &format!("unlocked {mallory}"));
    browser.wait_for_text("#history", "unlock by support: customer confirmed");
    browser.screenshot("review-unlocked.png");

    // Recorded in the lock list and the audit log.
    let entry = live
        .milter
        .locks()
        .get(mallory)
        .cloned()
        .expect("the entry stays, lapsed");
    assert!(!entry.is_active(std::time::SystemTime::now()));
    let event = entry.history.last().expect("a history event");
    assert_eq!((event.action.as_str(), event.by.as_str()), ("unlock", USER));
    assert!(
        live.milter
            .wait_for_log(&["admin action", "who=support", "action=unlock"], WAIT),
        "{}",
        live.milter.log_tail(20)
    );
    // The next message goes through Postfix to the sink.
    let after = live.send(&live.submission(mallory, &["x@remote.test"], "mallory-after-desk-unlock"));
    assert_accepted(&after);
    assert!(
        live.mta.sink.wait_for_count(4, WAIT),
        "the sink did not get the message after the unlock\n{}",
        live.mta.postfix.log_tail(20)
    );
    assert!(live.was_delivered("mallory-after-desk-unlock"));
}

/// Issue 18, 4: beside a long identity the Reason column was squeezed to a
/// dozen characters. The identity is cut short now (in full in its
/// tooltip and in the detail pane) and the reason keeps a readable width.
#[test]
fn a_long_identity_leaves_the_reason_readable() {
    if skip_unless_live() {
        return;
    }
    let (_users, status, config) = desk_config();
    let milter = EgressMilter::start(&config);
    let long = format!(
        "{}@mail.customer-with-a-very-long-domain-name.example.com",
        "firstname.middlename.lastname.department.building".repeat(2)
    );
    let reason = "customer reported a phishing kit on the web server that sent through this \
                  account for two days; password reset pending, see ticket 4711";
    for (identity, reason) in [(long.as_str(), reason), ("bob@example.com", "rule test")] {
        let out = milter.cli(&["locks", "add", identity, "--reason", reason]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let browser = Browser::start();
    browser.go(&format!("http://{status}/"));
    browser.wait_for_text("body", "Log in");
    browser.type_into("#user", USER);
    browser.type_into("#password", PASSWORD);
    browser.click("#login-button");
    browser.wait_for_text("#locks", "ticket 4711");
    let layout = browser.script(&format!(
        "const row = [...document.querySelectorAll('#locks tbody tr')].find(r => r.dataset.identity === {long:?});
         const id = row.querySelector('td.identity'), reason = row.querySelector('td.reason');
         const em = parseFloat(getComputedStyle(reason).fontSize);
         return {{ reason: reason.getBoundingClientRect().width / em,
                  identity: id.getBoundingClientRect().width / em,
                  title: id.title,
                  table: document.querySelector('#locks').getBoundingClientRect().width,
                  section: document.querySelector('#locks-section').getBoundingClientRect().width }};"
    ));
    let shot = browser.screenshot("review-long-identity.png");
    let width = |k: &str| layout[k].as_f64().unwrap_or_else(|| panic!("{k} in {layout}"));
    assert!(
        width("reason") >= 16.0,
        "the reason is {:.1}em wide beside a long identity ({:.1}em); see {}",
        width("reason"),
        width("identity"),
        shot.display()
    );
    assert!(width("identity") <= 24.0, "{layout}; see {}", shot.display());
    assert_eq!(layout["title"], long.as_str(), "the full identity in the tooltip");
    assert!(
        width("table") <= width("section") + 1.0,
        "the table overflows its section: {layout}"
    );
    // Selected, the detail pane names it in full.
    browser.click("#locks tbody tr[data-identity^='firstname']");
    browser.wait_for_text("#detail-title", &long);
}
