// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Fleet mode (issue 11): several MTAs share their rate counters and locks
//! on Redis, so a hijacked account that spreads its mail over every door of
//! the fleet gets what one host would allow, and a lock made anywhere holds
//! everywhere.
//!
//! [`Fleet`] is two [`Live`] hosts (each its own egress-milter, Postfix and
//! sink) built from one configuration, plus a private [`RedisServer`] they
//! share through `[store] backend = "redis"`. The scenarios drive both
//! Postfix instances over SMTP with SASL logins, as a blaster with stolen
//! credentials and a second MX would, and kill and restart Redis under
//! them. They rely on these keys of `[store]` (docs: /work/fleet-spec.md):
//! `backend`, `url`, `prefix`, `fleet_size`, `timeout`, `retry_interval`,
//! on the Redis hash `<prefix>{locks}:entries` (field = identity), on
//! `/healthz` naming the mode (`ok` / `degraded: ...`) and on the gauge
//! `egress_milter_store_degraded`.
//!
//! The probes of the other host stop after MAIL FROM
//! ([`mail_from_reply`]): the fixture's lock rule counts recipients, so a
//! probe never trips it itself, and a locked reply it gets can only come
//! from the lock made on the first host.

use crate::egress::{MilterConfig, free_port, poll_until};
use crate::harness::skip_unless_live;
use crate::redis::RedisServer;
use crate::scenarios::{
    Live, WAIT, assert_accepted, assert_refused, delivery_bound, locked_text, message, password, throttled_text,
};
use crate::smtp::{Envelope, Reply, SendOutcome, SmtpClient, Stage, open_session, send_transaction};
use egress_milter::config::Config;
use egress_milter::locks::file::{LockEntry, LockSource};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Hosts in every fleet here (`[store] fleet_size`).
const FLEET_SIZE: u32 = 2;
/// How fast a lock or unlock made on one host must hold on the other
/// (fleet-spec.md: "within 1 s").
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long the scenarios look for a propagation before giving up: longer
/// than [`PROPAGATION`], so that a slow one is measured and reported as
/// such rather than as "never".
const PROPAGATION_LOOK: Duration = Duration::from_secs(5);
/// Interval between the probes of the other host.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// `[store] timeout` of every fleet here: a decision waits no longer for Redis.
const STORE_TIMEOUT: &str = "200ms";
/// `[store] retry_interval`: how often a host tries Redis again while it is down.
const RETRY_INTERVAL: &str = "250ms";
/// Longest SMTP transaction while Redis is down or gone (MAIL to the end of
/// DATA: four decisions of at most [`STORE_TIMEOUT`] each, plus Postfix).
const TRANSACTION_BOUND: Duration = Duration::from_secs(2);
/// How long a host may take to notice Redis came back and write what it
/// holds (a few `retry_interval`s).
const RECOVERY: Duration = Duration::from_secs(5);
/// The fixture's lock rule (recipients attempted per identity).
const LOCK_RULE: &str = "lock-recipients";
/// The fixture's throttle (messages accepted per identity).
const THROTTLE_RULE: &str = "messages-per-hour";

/// Two hosts sharing one Redis. Fields drop in order: both hosts (Postfix,
/// then egress-milter) stop before Redis does.
pub(crate) struct Fleet {
    pub(crate) a: Live,
    pub(crate) b: Live,
    /// None with the memory backend.
    pub(crate) redis: Option<RedisServer>,
    /// `[store] prefix`: unique per fleet, so keys never mix.
    prefix: String,
    /// Each host's `[status] listen`, when the configuration has one.
    status: [Option<String>; 2],
}

impl Fleet {
    /// Starts a private Redis, then two hosts with `config` plus `[store]
    /// backend = "redis"`, its `url`, a fresh `prefix`, `fleet_size = 2`,
    /// and `timeout` / `retry_interval` unless `config` sets them. With a
    /// `[status] listen` in `config`, each host gets a port of its own.
    pub(crate) fn start(config: MilterConfig) -> Fleet {
        let redis = RedisServer::start();
        let prefix = unique_prefix();
        let mut config = config
            .set("store.backend", "redis")
            .set("store.url", redis.url().as_str())
            .set("store.prefix", prefix.as_str())
            .set("store.fleet_size", i64::from(FLEET_SIZE));
        for (key, value) in [
            ("store.timeout", STORE_TIMEOUT),
            ("store.retry_interval", RETRY_INTERVAL),
        ] {
            if config.get(key).is_none() {
                config = config.set(key, value);
            }
        }
        Self::start_hosts(config, Some(redis), prefix)
    }

    /// Two hosts with `config` as it is: no `[store]` section, so each
    /// counts and locks on its own (the memory backend, the default). The
    /// harness's self-test, and the contrast that shows what fleet mode
    /// is for.
    pub(crate) fn start_memory(config: MilterConfig) -> Fleet {
        Self::start_hosts(config, None, String::new())
    }

    fn start_hosts(config: MilterConfig, redis: Option<RedisServer>, prefix: String) -> Fleet {
        // Each host its own status port: two daemons cannot listen on one.
        let with_status = |config: &MilterConfig| -> (MilterConfig, Option<String>) {
            if config.get("status.listen").is_none() {
                return (config.clone(), None);
            }
            let listen = format!(
                "127.0.0.1:{}",
                free_port().expect("a free port for the status listener")
            );
            (config.clone().set("status.listen", listen.as_str()), Some(listen))
        };
        let (config_a, status_a) = with_status(&config);
        let (config_b, status_b) = with_status(&config);
        let a = Live::start(config_a);
        let b = Live::start(config_b);
        let fleet = Fleet {
            a,
            b,
            redis,
            prefix,
            status: [status_a, status_b],
        };
        for (name, live, listen) in fleet.hosts_with_status() {
            if let Some(listen) = listen {
                assert!(
                    poll_until(WAIT, || TcpStream::connect(listen).is_ok()),
                    "host {name}: status listener {listen} not up\n{}",
                    fleet.tails()
                );
            }
            eprintln!(
                "fleet: host {name} = milter {} (port {}), postfix submission port {}",
                live.milter.dir().display(),
                live.milter.port(),
                live.mta.postfix.submission_port()
            );
        }
        fleet
    }

    fn hosts_with_status(&self) -> [(&'static str, &Live, Option<&str>); 2] {
        [
            ("A", &self.a, self.status[0].as_deref()),
            ("B", &self.b, self.status[1].as_deref()),
        ]
    }

    /// Both hosts, named.
    pub(crate) fn hosts(&self) -> [(&'static str, &Live); 2] {
        [("A", &self.a), ("B", &self.b)]
    }

    /// The shared Redis (panics with the memory backend).
    pub(crate) fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a fleet with the redis backend")
    }

    /// The shared Redis, to kill and restart it.
    pub(crate) fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a fleet with the redis backend")
    }

    /// The Redis hash of the fleet's locks: `<prefix>{locks}:entries`.
    pub(crate) fn locks_key(&self) -> String {
        format!("{}{{locks}}:entries", self.prefix)
    }

    /// Whether Redis' lock hash has a field for `identity` now.
    pub(crate) fn lock_in_redis(&self, identity: &str) -> bool {
        self.redis().cli(&["HEXISTS", &self.locks_key(), identity]) == "1"
    }

    /// Host `host`'s (0: A, 1: B) status listener address.
    fn status_of(&self, host: usize) -> &str {
        self.status[host]
            .as_deref()
            .expect("the configuration has a [status] listen")
    }

    /// The end of every log (both daemons, both Postfix instances, Redis),
    /// for failure messages: what one host did is often explained by what
    /// the other did.
    pub(crate) fn tails(&self) -> String {
        let mut out = String::new();
        for (name, live) in self.hosts() {
            out.push_str(&format!(
                "\n--- host {name}: egress-milter log ({}) ---\n{}\n--- host {name}: maillog ---\n{}\n",
                live.milter.log_path().display(),
                live.milter.log_tail(40),
                live.mta.postfix.log_tail(15)
            ));
        }
        if let Some(redis) = &self.redis {
            out.push_str(&format!("--- redis log ---\n{}\n", redis.log_tail(15)));
        }
        out
    }

    /// Sends one message on `live`; panics (with every log) only if the
    /// SMTP conversation itself fails.
    pub(crate) fn send(&self, envelope: &Envelope) -> SendOutcome {
        crate::smtp::send_message(envelope)
            .unwrap_or_else(|e| panic!("SMTP conversation failed: {e}\n{}", self.tails()))
    }

    /// A probe of `live`: a fresh session that logs in as `login`, says
    /// MAIL FROM and goes away (RSET, QUIT). The reply to MAIL FROM and how
    /// long the whole probe took. Nothing it does counts against a
    /// recipient rule.
    pub(crate) fn mail_from_reply(&self, live: &Live, login: &str) -> (Reply, Duration) {
        let started = Instant::now();
        let port = live.mta.postfix.submission_port();
        let mut client = open_session(&Envelope::new(port, login, &[]).auth(login, &password(login)))
            .unwrap_or_else(|e| panic!("probe session as {login}: {e}\n{}", self.tails()));
        let reply = client
            .mail_from(login)
            .unwrap_or_else(|e| panic!("probe MAIL FROM as {login}: {e}\n{}", self.tails()));
        if reply.is_positive() {
            let _ = client.rset();
        }
        let _ = client.quit();
        (reply, started.elapsed())
    }

    /// Waits (bounded by `timeout`) until `live`'s lock list file holds
    /// `identity`; its entry, or a panic with every log.
    pub(crate) fn wait_for_lock_file(&self, name: &str, live: &Live, identity: &str, timeout: Duration) -> LockEntry {
        live.milter.wait_for_lock(identity, timeout).unwrap_or_else(|| {
            panic!(
                "{identity} not in host {name}'s lock list ({}) within {timeout:?}: {:?}\n{}",
                live.milter.lock_file().display(),
                live.milter.locks(),
                self.tails()
            )
        })
    }

    /// `/healthz` of host `host` (0: A, 1: B): status code and body.
    pub(crate) fn healthz(&self, host: usize) -> (u16, String) {
        http_get(self.status_of(host), "/healthz")
    }

    /// The value of the unlabelled metric `name` on host `host`.
    pub(crate) fn metric(&self, host: usize, name: &str) -> Option<f64> {
        let (code, body) = http_get(self.status_of(host), "/metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// A `[store] prefix` no other fleet of this test binary uses.
fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!(
        "egress-live-{}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain HTTP/1.0 GET (bounded by a read timeout): status code and body.
fn http_get(listen: &str, path: &str) -> (u16, String) {
    let mut stream =
        TcpStream::connect(listen).unwrap_or_else(|e| panic!("connect to the status listener {listen}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send the request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the answer");
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// The count of the rule `name` in the daemon's parsed configuration.
fn rule_count(config: &Config, name: &str) -> u32 {
    config
        .rules
        .iter()
        .find(|r| r.name.get_ref() == name)
        .map(|r| r.rate.count.get())
        .unwrap_or_else(|| panic!("the configuration has no rule \"{name}\""))
}

/// A rule's limit on each host while Redis is down: count / fleet_size, at
/// least 1 (fleet-spec.md).
fn degraded(count: u32) -> u32 {
    (count / FLEET_SIZE).max(1)
}

/// The fleet fixture, `milter-tests/live/fixtures/fleet.toml`.
fn fleet_config() -> MilterConfig {
    MilterConfig::fixture("fleet.toml")
}

/// `n` distinct recipients.
fn recipients(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}@remote.test")).collect()
}

/// The reply that tripped a lock, and when it came.
struct Tripped {
    /// The recipient (1-based) whose RCPT got the locked reply.
    at_rcpt: usize,
    reply: Reply,
    at: Instant,
}

/// Trips the lock rule for `login` on `live`: one session, MAIL FROM, then
/// RCPT TO one recipient after another until one is refused (at most
/// `max_rcpts`), then RSET and QUIT (no content: the lock is what is
/// tested). Asserts that the refusal is the locked reply, and that every
/// step took less than [`TRANSACTION_BOUND`].
fn trip_lock(fleet: &Fleet, live: &Live, login: &str, max_rcpts: usize) -> Tripped {
    let port = live.mta.postfix.submission_port();
    let started = Instant::now();
    let mut client: SmtpClient = open_session(&Envelope::new(port, login, &[]).auth(login, &password(login)))
        .unwrap_or_else(|e| panic!("session as {login}: {e}\n{}", fleet.tails()));
    let mail = client.mail_from(login).expect("MAIL FROM");
    assert_eq!(mail.code, 250, "{login}: {}\n{}", client.transcript(), fleet.tails());
    for (i, rcpt) in recipients(&login.replace('@', "-at-"), max_rcpts).iter().enumerate() {
        let reply = client.rcpt_to(rcpt).expect("RCPT TO");
        let at = Instant::now();
        if reply.is_positive() {
            continue;
        }
        let _ = client.rset();
        let transcript = client.transcript();
        let _ = client.quit();
        assert_eq!(
            (reply.code, reply.enhanced.as_deref(), reply.text()),
            (550, Some("5.7.1"), locked_text(login)),
            "{login}: RCPT {} refused, but not as locked:\n{transcript}\n{}",
            i + 1,
            fleet.tails()
        );
        assert!(
            at - started < TRANSACTION_BOUND,
            "{login}: tripping the lock took {:?}\n{transcript}\n{}",
            at - started,
            fleet.tails()
        );
        return Tripped {
            at_rcpt: i + 1,
            reply,
            at,
        };
    }
    panic!(
        "{login}: {max_rcpts} recipients accepted, the lock rule never tripped:\n{}\n{}",
        client.transcript(),
        fleet.tails()
    );
}

/// Probes `live` as `login` every [`PROBE_EVERY`] until MAIL FROM gets
/// the locked reply, for at most [`PROPAGATION_LOOK`] from `since`. The
/// time from `since` to that reply, and every reply before it (with its
/// time since `since`), for the failure message.
fn probe_until_locked(
    fleet: &Fleet,
    live: &Live,
    login: &str,
    since: Instant,
) -> (Option<Duration>, Vec<(Duration, String)>) {
    let mut seen = Vec::new();
    loop {
        let (reply, took) = fleet.mail_from_reply(live, login);
        assert!(
            took < TRANSACTION_BOUND,
            "{login}: a probe took {took:?} ({reply})\n{}",
            fleet.tails()
        );
        if reply.code == 550 && reply.enhanced.as_deref() == Some("5.7.1") && reply.text() == locked_text(login) {
            return (Some(since.elapsed()), seen);
        }
        seen.push((since.elapsed(), reply.to_string()));
        if since.elapsed() >= PROPAGATION_LOOK {
            return (None, seen);
        }
        thread::sleep(PROBE_EVERY.saturating_sub(took));
    }
}

/// Asserts that MAIL FROM as `login` gets the locked reply on `live` now.
#[track_caller]
fn assert_locked_at_mail(fleet: &Fleet, name: &str, live: &Live, login: &str) {
    let (reply, took) = fleet.mail_from_reply(live, login);
    assert!(
        reply.code == 550 && reply.enhanced.as_deref() == Some("5.7.1") && reply.text() == locked_text(login),
        "host {name}: MAIL FROM as {login} got {reply}, expected the locked reply\n{}",
        fleet.tails()
    );
    assert!(
        took < TRANSACTION_BOUND,
        "host {name}: the locked reply took {took:?}\n{}",
        fleet.tails()
    );
}

/// One transaction of a blaster, as recorded.
struct Shot {
    host: usize,
    took: Duration,
    outcome: SendOutcome,
}

/// Where a blaster stops for a while: before attempt `at` it waits
/// (bounded) until `go` is set, with its sessions open.
struct Pause<'a> {
    at: usize,
    reached: &'a AtomicBool,
    go: &'a AtomicBool,
}

/// A blaster: `n` messages from `login`, alternating between the
/// submission ports `ports[0]` and `ports[1]` over one session on each, as
/// a bot with stolen credentials spreads its mail over a fleet's doors;
/// with `pause`, it holds still at that attempt until told to go on.
fn blast_alternating(ports: [u16; 2], login: &str, n: usize, pause: Option<Pause<'_>>) -> Vec<Shot> {
    let session = |port: u16| {
        open_session(&Envelope::new(port, login, &[]).auth(login, &password(login))).expect("blaster session")
    };
    let mut clients = [session(ports[0]), session(ports[1])];
    let mut shots = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(pause) = pause.as_ref().filter(|p| p.at == i) {
            pause.reached.store(true, Ordering::SeqCst);
            poll_until(WAIT, || pause.go.load(Ordering::SeqCst));
        }
        let host = i % 2;
        let rcpt = format!("victim{i}@remote.test");
        let envelope = Envelope::new(ports[host], login, &[&rcpt]).content(&message(
            login,
            &[&rcpt],
            &format!("fleet-blast-{i}"),
            &[],
        ));
        let started = Instant::now();
        let outcome = send_transaction(&mut clients[host], &envelope).expect("blaster transaction");
        shots.push(Shot {
            host,
            took: started.elapsed(),
            outcome,
        });
    }
    for client in clients {
        let _ = client.quit();
    }
    shots
}

/// Waits until each host's sink holds exactly what that host accepted and
/// its queue is empty.
fn assert_delivered(fleet: &Fleet, expected: [usize; 2]) {
    for ((name, live), n) in fleet.hosts().into_iter().zip(expected) {
        assert!(
            live.mta.sink.wait_for_count(n, WAIT),
            "host {name}: sink got {} of {n} messages\n{}",
            live.mta.sink.count(),
            fleet.tails()
        );
        assert!(
            live.mta.postfix.wait_queue_empty(WAIT).expect("postqueue -j"),
            "host {name}: queue not empty: {:#?}",
            live.mta.postfix.queue()
        );
        assert_eq!(live.mta.sink.count(), n, "host {name}\n{}", fleet.tails());
    }
}

// ---------------------------------------------------------------------------
// The harness.

/// Two hosts with the memory backend: each has its own daemon, Postfix,
/// sink, lock list and status port, and, sharing nothing, each gives a
/// blaster that alternates between them the whole single-host allowance:
/// twice what one host allows, the hole fleet mode closes. A lock made on
/// A stays on A. (Runs before fleet mode exists: it writes no `[store]`.)
#[test]
fn fleet_fixture_self_test_with_memory_backend() {
    if skip_unless_live() {
        return;
    }
    let fleet = Fleet::start_memory(fleet_config().set("status.listen", "127.0.0.1:7026"));
    let (a, b) = (&fleet.a, &fleet.b);
    assert_ne!(a.milter.port(), b.milter.port());
    assert_ne!(a.milter.dir(), b.milter.dir());
    assert_ne!(a.mta.postfix.submission_port(), b.mta.postfix.submission_port());
    assert_ne!(fleet.status[0], fleet.status[1]);
    for host in 0..2 {
        let (code, body) = fleet.healthz(host);
        assert_eq!((code, body.trim()), (200, "ok"), "host {host}\n{}", fleet.tails());
    }

    let config = a.milter.config();
    let allowance = delivery_bound(&config, Duration::ZERO) as usize;
    let ports = [a.mta.postfix.submission_port(), b.mta.postfix.submission_port()];
    let shots = blast_alternating(ports, "blaster@example.com", 4 * allowance, None);
    let accepted = |host: usize| shots.iter().filter(|s| s.host == host && s.outcome.accepted()).count();
    assert_eq!(
        [accepted(0), accepted(1)],
        [allowance, allowance],
        "each host counts on its own\n{}",
        fleet.tails()
    );
    for shot in shots.iter().filter(|s| !s.outcome.accepted()) {
        assert_refused(
            &shot.outcome,
            Stage::Data,
            451,
            "4.7.1",
            &throttled_text(THROTTLE_RULE, "blaster@example.com"),
        );
    }
    assert_delivered(&fleet, [allowance, allowance]);

    // A lock tripped on A: known on A only.
    let mallory = "mallory@example.com";
    let lock_at = rule_count(&config, LOCK_RULE) as usize + 1;
    let tripped = trip_lock(&fleet, a, mallory, lock_at + 1);
    assert_eq!(tripped.at_rcpt, lock_at, "{}", fleet.tails());
    fleet.wait_for_lock_file("A", a, mallory, WAIT);
    assert_locked_at_mail(&fleet, "A", a, mallory);
    let (reply, _) = fleet.mail_from_reply(b, mallory);
    assert_eq!(
        reply.code,
        250,
        "B knows nothing of A's lock: {reply}\n{}",
        fleet.tails()
    );
    assert!(b.milter.locks().entries.is_empty(), "{:?}", b.milter.locks());
}

// ---------------------------------------------------------------------------
// The fleet scenarios.

/// A blaster alternates 40 messages between host A and host B: the shared
/// counters let exactly the single-host allowance through (10, from the
/// configuration), the first ten attempts in order; every later one is
/// throttled at MAIL FROM (451 4.7.1), on either host.
#[test]
fn fleet_blaster_over_both_doors_gets_only_the_single_host_allowance() {
    if skip_unless_live() {
        return;
    }
    let fleet = Fleet::start(fleet_config());
    let config = fleet.a.milter.config();
    let blaster = "blaster@example.com";
    let ports = [
        fleet.a.mta.postfix.submission_port(),
        fleet.b.mta.postfix.submission_port(),
    ];
    let started = Instant::now();
    let shots = blast_alternating(ports, blaster, 40, None);
    let bound = delivery_bound(&config, started.elapsed()) as usize;
    let allowance = delivery_bound(&config, Duration::ZERO) as usize;
    assert_eq!(bound, allowance, "the test ran longer than a window");

    let accepted: Vec<usize> = shots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.outcome.accepted())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        accepted,
        (0..allowance).collect::<Vec<_>>(),
        "accepted attempts (0-based, even = host A); the fleet allows {allowance} in all\n{}",
        fleet.tails()
    );
    for (i, shot) in shots.iter().enumerate().skip(allowance) {
        let reply = shot.outcome.refusal();
        assert!(
            shot.outcome.refused_at() == Some(Stage::Data)
                && reply.is_some_and(|r| r.code == 451
                    && r.enhanced.as_deref() == Some("4.7.1")
                    && r.text().starts_with(&throttled_text(THROTTLE_RULE, blaster))),
            "attempt {i} on host {}: expected the throttle at DATA:\n{}\n{}",
            ["A", "B"][shot.host],
            shot.outcome.transcript,
            fleet.tails()
        );
    }
    let per_host = |host: usize| (0..allowance).filter(|i| i % 2 == host).count();
    assert_delivered(&fleet, [per_host(0), per_host(1)]);
    for (name, live) in fleet.hosts() {
        assert!(
            live.milter.locks().entries.is_empty(),
            "host {name}: {:?}",
            live.milter.locks()
        );
    }
}

/// The lock rule trips on host A (the 13th recipient of one message gets
/// the locked reply). From that reply, host B refuses the login at MAIL
/// FROM with the locked reply in less than a second (probed every 50 ms
/// with a fresh session that stops after MAIL FROM, so the probes trip
/// nothing themselves), and B's lock list file holds the lock with A's
/// reason, locked_at, rule and source.
#[test]
fn fleet_lock_tripped_on_a_refuses_at_b_within_1s() {
    if skip_unless_live() {
        return;
    }
    let fleet = Fleet::start(fleet_config());
    let mallory = "mallory@example.com";
    let lock_at = rule_count(&fleet.a.milter.config(), LOCK_RULE) as usize + 1;
    // Before: B lets mallory in.
    let (reply, _) = fleet.mail_from_reply(&fleet.b, mallory);
    assert_eq!(
        reply.code,
        250,
        "B refused mallory before any lock: {reply}\n{}",
        fleet.tails()
    );

    let tripped = trip_lock(&fleet, &fleet.a, mallory, lock_at + 5);
    assert_eq!(
        tripped.at_rcpt,
        lock_at,
        "the lock rule tripped at the wrong recipient ({})\n{}",
        tripped.reply,
        fleet.tails()
    );
    let (took, before) = probe_until_locked(&fleet, &fleet.b, mallory, tripped.at);
    let took = took.unwrap_or_else(|| {
        panic!(
            "host B never refused {mallory} as locked within {PROPAGATION_LOOK:?} of the lock on A; its replies: \
             {before:#?}\n{}",
            fleet.tails()
        )
    });
    println!("lock on A refused at B after {took:?} ({} probes before)", before.len());
    assert!(
        took < PROPAGATION,
        "host B refused {mallory} as locked {took:?} after the lock on A (at most {PROPAGATION:?}); replies before: \
         {before:#?}\n{}",
        fleet.tails()
    );
    // What B answered before the lock reached it was the ordinary 250.
    assert!(
        before.iter().all(|(_, r)| r.starts_with("250")),
        "{before:#?}\n{}",
        fleet.tails()
    );

    let on_a = fleet.wait_for_lock_file("A", &fleet.a, mallory, WAIT);
    let on_b = fleet.wait_for_lock_file("B", &fleet.b, mallory, PROPAGATION_LOOK);
    assert_eq!(on_a.source, LockSource::Auto);
    assert_eq!(on_a.rule.as_deref(), Some(LOCK_RULE));
    assert_eq!(
        (&on_b.identity, &on_b.reason, &on_b.locked_at, &on_b.rule, &on_b.source),
        (&on_a.identity, &on_a.reason, &on_a.locked_at, &on_a.rule, &on_a.source),
        "B's lock list entry differs from A's\n{}",
        fleet.tails()
    );
    assert!(
        fleet.lock_in_redis(mallory),
        "{} has no {mallory}\n{}",
        fleet.locks_key(),
        fleet.tails()
    );
    // B did not lock it a second time on its own.
    assert!(
        fleet
            .b
            .milter
            .log_lines(&["identity locked", &format!("identity={mallory}")])
            .is_empty(),
        "{}",
        fleet.tails()
    );
}

/// An identity locked automatically through host A is unlocked with
/// `egress-milter --config B.toml locks remove ID` on host B: host A
/// accepts (and delivers) that login's mail again in less than a second
/// after the command returns, without locking it again (the attempts
/// that locked it are forgotten fleet-wide), and both lock lists are
/// empty.
#[test]
fn fleet_unlock_on_b_resumes_delivery_at_a_within_1s() {
    if skip_unless_live() {
        return;
    }
    let fleet = Fleet::start(fleet_config());
    let mallory = "mallory@example.com";
    let lock_at = rule_count(&fleet.a.milter.config(), LOCK_RULE) as usize + 1;
    trip_lock(&fleet, &fleet.a, mallory, lock_at);
    fleet.wait_for_lock_file("B", &fleet.b, mallory, PROPAGATION_LOOK);
    assert_locked_at_mail(&fleet, "A", &fleet.a, mallory);

    let out = fleet.b.milter.cli(&["locks", "remove", mallory]);
    let unlocked_at = Instant::now();
    assert!(
        out.status.success(),
        "locks remove on B: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.tails()
    );

    let mut refused = Vec::new();
    let accepted = loop {
        let subject = format!("mallory-after-unlock-{}", refused.len() + 1);
        let outcome = fleet.send(&fleet.a.submission(mallory, &["friend@remote.test"], &subject));
        if outcome.accepted() {
            break Some((unlocked_at.elapsed(), outcome));
        }
        // Locked again at RCPT: the unlock did not reset the counts that
        // locked it (fleet-wide, on Redis), so the next recipient re-trips.
        assert!(
            outcome.refused_at() != Some(Stage::RcptTo),
            "host A locked {mallory} again after the unlock on B:\n{}\n{}",
            outcome.transcript,
            fleet.tails()
        );
        // Until the unlock reaches A: the locked reply at MAIL FROM, nothing else.
        assert_refused(&outcome, Stage::MailFrom, 550, "5.7.1", &locked_text(mallory));
        refused.push(unlocked_at.elapsed());
        if unlocked_at.elapsed() >= PROPAGATION_LOOK {
            break None;
        }
        thread::sleep(PROBE_EVERY);
    };
    let (took, outcome) = accepted.unwrap_or_else(|| {
        panic!(
            "host A still refuses {mallory} {PROPAGATION_LOOK:?} after the unlock on B ({} refusals)\n{}",
            refused.len(),
            fleet.tails()
        )
    });
    println!(
        "unlock on B accepted at A after {took:?} ({} refusals before)",
        refused.len()
    );
    assert_accepted(&outcome);
    assert!(
        took < PROPAGATION,
        "host A accepted {mallory} {took:?} after the unlock on B (at most {PROPAGATION:?})\n{}",
        fleet.tails()
    );
    assert_delivered(&fleet, [1, 0]);
    for (name, live) in fleet.hosts() {
        assert!(
            poll_until(PROPAGATION_LOOK, || live.milter.locks().get(mallory).is_none()),
            "host {name} still lists {mallory}: {:?}\n{}",
            live.milter.locks(),
            fleet.tails()
        );
    }
    assert!(!fleet.lock_in_redis(mallory), "{}", fleet.tails());
    // Locked once (on A), never again.
    let locked: usize = fleet
        .hosts()
        .iter()
        .map(|(_, live)| live.milter.log_lines(&["identity locked"]).len())
        .sum();
    assert_eq!(locked, 1, "{}", fleet.tails());
}

/// Redis is SIGKILLed while a blaster alternates between A and B (timeout
/// 200ms). Every transaction still gets its answer in under 2 s; after the
/// kill each host lets at most count / fleet_size (5) of the blaster's
/// messages through and throttles the rest (4xx); a lock made before the
/// kill is enforced on both hosts; a lock tripped on A during the outage
/// (at the degraded limit) is in Redis' lock hash within a few seconds of
/// Redis coming back (same port, empty), and then B refuses it too.
#[test]
fn fleet_redis_killed_mid_blast() {
    if skip_unless_live() {
        return;
    }
    let mut fleet = Fleet::start(fleet_config());
    let config = fleet.a.milter.config();
    let throttle = rule_count(&config, THROTTLE_RULE);
    let lock_count = rule_count(&config, LOCK_RULE) as usize;
    let (blaster, mallory, trudy) = ("blaster@example.com", "mallory@example.com", "trudy@example.net");

    // A lock made while Redis is up, known to both hosts.
    trip_lock(&fleet, &fleet.a, mallory, lock_count + 1);
    fleet.wait_for_lock_file("B", &fleet.b, mallory, PROPAGATION_LOOK);

    // The blaster holds still at attempt KILL_AT, its sessions to both
    // hosts open, while Redis is killed; then it goes on.
    const ATTEMPTS: usize = 40;
    const KILL_AT: usize = 6;
    let ports = [
        fleet.a.mta.postfix.submission_port(),
        fleet.b.mta.postfix.submission_port(),
    ];
    let (reached, go) = (AtomicBool::new(false), AtomicBool::new(false));
    let redis = fleet.redis.as_mut().expect("redis");
    let shots = thread::scope(|s| {
        let pause = Pause {
            at: KILL_AT,
            reached: &reached,
            go: &go,
        };
        let handle = s.spawn(|| blast_alternating(ports, blaster, ATTEMPTS, Some(pause)));
        let paused = poll_until(WAIT, || reached.load(Ordering::SeqCst));
        redis.kill9();
        go.store(true, Ordering::SeqCst);
        let shots = handle.join().expect("blaster thread");
        assert!(paused, "the blaster never reached attempt {KILL_AT}");
        shots
    });
    assert_eq!(shots.len(), ATTEMPTS);

    for (i, shot) in shots.iter().enumerate() {
        assert!(
            shot.took < TRANSACTION_BOUND,
            "attempt {i} on host {} took {:?} (Redis down: each decision waits at most {STORE_TIMEOUT})\n{}\n{}",
            ["A", "B"][shot.host],
            shot.took,
            shot.outcome.transcript,
            fleet.tails()
        );
        if let Some(reply) = shot.outcome.refusal() {
            assert!(
                reply.is_transient(),
                "attempt {i} refused for good: {reply}\n{}",
                fleet.tails()
            );
        }
    }
    assert!(
        shots[..KILL_AT].iter().all(|s| s.outcome.accepted()),
        "the blaster's first {KILL_AT} messages, within the allowance, were not all accepted\n{}",
        fleet.tails()
    );
    let limit = degraded(throttle) as usize;
    let mut accepted = [0; 2];
    for host in 0..2 {
        let after: Vec<&Shot> = shots[KILL_AT..].iter().filter(|s| s.host == host).collect();
        let through = after.iter().filter(|s| s.outcome.accepted()).count();
        println!(
            "host {}: {through} of {} accepted after the kill (degraded limit {limit})",
            ["A", "B"][host],
            after.len()
        );
        assert!(
            through <= limit,
            "host {}: {through} of the blaster's messages accepted after Redis died, the degraded limit is {limit} \
             ({throttle} / {FLEET_SIZE})\n{}",
            ["A", "B"][host],
            fleet.tails()
        );
        for shot in after.iter().filter(|s| !s.outcome.accepted()) {
            assert_refused(
                &shot.outcome,
                Stage::Data,
                451,
                "4.7.1",
                &throttled_text(THROTTLE_RULE, blaster),
            );
        }
        accepted[host] = shots.iter().filter(|s| s.host == host && s.outcome.accepted()).count();
    }

    // The lock made before the outage holds on both hosts.
    for (name, live) in fleet.hosts() {
        assert_locked_at_mail(&fleet, name, live, mallory);
    }
    // A lock tripped during the outage, at the degraded limit.
    let tripped = trip_lock(&fleet, &fleet.a, trudy, lock_count + 1);
    assert_eq!(
        tripped.at_rcpt,
        degraded(lock_count as u32) as usize + 1,
        "the lock rule tripped at the wrong recipient while Redis was down\n{}",
        fleet.tails()
    );
    fleet.wait_for_lock_file("A", &fleet.a, trudy, WAIT);
    assert_locked_at_mail(&fleet, "A", &fleet.a, trudy);

    // Redis comes back, empty: the outage's lock is pushed, the old one re-populated.
    fleet.redis_mut().start_again();
    let back_at = Instant::now();
    let key = fleet.locks_key();
    for who in [trudy, mallory] {
        assert!(
            fleet.redis().wait_for_hash_field(&key, who, RECOVERY),
            "{key} has no {who} {RECOVERY:?} after Redis came back: {:?}\n{}",
            fleet.redis().try_cli(&["HKEYS", &key]),
            fleet.tails()
        );
    }
    println!("locks back in redis after {:?}", back_at.elapsed());
    let (took, before) = probe_until_locked(&fleet, &fleet.b, trudy, back_at);
    assert!(
        took.is_some_and(|t| t < RECOVERY),
        "host B did not refuse {trudy} as locked within {RECOVERY:?} of Redis coming back ({took:?}); replies: \
         {before:#?}\n{}",
        fleet.tails()
    );
    fleet.wait_for_lock_file("B", &fleet.b, trudy, PROPAGATION_LOOK);
    assert_delivered(&fleet, accepted);
}

/// Locks made on both hosts are in Redis' hash; Redis is restarted empty
/// (SIGKILL, start on the same port without persistence): within a few
/// seconds the hash holds them again, each with its lock as JSON, and
/// both hosts still refuse both identities.
#[test]
fn fleet_redis_restarted_empty_is_repopulated() {
    if skip_unless_live() {
        return;
    }
    let mut fleet = Fleet::start(fleet_config());
    let lock_at = rule_count(&fleet.a.milter.config(), LOCK_RULE) as usize + 1;
    let (mallory, trudy) = ("mallory@example.com", "trudy@example.net");
    trip_lock(&fleet, &fleet.a, mallory, lock_at);
    trip_lock(&fleet, &fleet.b, trudy, lock_at);
    let key = fleet.locks_key();
    for who in [mallory, trudy] {
        assert!(
            fleet.redis().wait_for_hash_field(&key, who, PROPAGATION_LOOK),
            "{key} has no {who}\n{}",
            fleet.tails()
        );
    }

    fleet.redis_mut().kill9();
    fleet.redis_mut().start_again();
    let back_at = Instant::now();
    // Not checked empty here: a host may write to it before this line runs
    // (redis_fixture_self_test shows that a restart comes back empty).
    for who in [mallory, trudy] {
        assert!(
            fleet.redis().wait_for_hash_field(&key, who, RECOVERY),
            "{key} has no {who} {RECOVERY:?} after Redis came back empty: {:?}\n{}",
            fleet.redis().try_cli(&["HKEYS", &key]),
            fleet.tails()
        );
        // The lock as JSON, after whatever the store puts before it (main
        // at 174190c: a version, "1796169200084 {...}").
        let value = fleet.redis().cli(&["HGET", &key, who]);
        let lock: Option<serde_json::Value> = value.find('{').and_then(|at| serde_json::from_str(&value[at..]).ok());
        assert_eq!(
            lock.as_ref().and_then(|l| l["identity"].as_str()),
            Some(who),
            "{key} {who} does not hold its lock as JSON: {value}"
        );
    }
    println!("re-populated after {:?}", back_at.elapsed());
    for (name, live) in fleet.hosts() {
        for who in [mallory, trudy] {
            assert_locked_at_mail(&fleet, name, live, who);
        }
    }
}

/// With Redis down, `/healthz` of both hosts says `degraded` (still 200:
/// mail flows, as a message through each shows) and the gauge
/// `egress_milter_store_degraded` is 1; once Redis is back, `ok` and 0.
#[test]
fn fleet_healthz_says_degraded_while_redis_is_down() {
    if skip_unless_live() {
        return;
    }
    let mut fleet = Fleet::start(fleet_config().set("status.listen", "127.0.0.1:7026"));
    const GAUGE: &str = "egress_milter_store_degraded";
    let health_is = |fleet: &Fleet, host: usize, mode: &str| {
        let (code, body) = fleet.healthz(host);
        code == 200 && body.trim_start().starts_with(mode)
    };
    for host in 0..2 {
        assert!(
            poll_until(RECOVERY, || health_is(&fleet, host, "ok")),
            "host {host}: /healthz {:?}\n{}",
            fleet.healthz(host),
            fleet.tails()
        );
        assert_eq!(fleet.metric(host, GAUGE), Some(0.0), "host {host}");
    }

    fleet.redis_mut().kill9();
    for (host, (name, live)) in fleet.hosts().into_iter().enumerate() {
        // A decision meets the dead Redis (and the mail still flows).
        let outcome = fleet.send(&live.submission("alice@example.com", &["x@remote.test"], &format!("down-{name}")));
        assert_accepted(&outcome);
        assert!(
            poll_until(RECOVERY, || health_is(&fleet, host, "degraded")),
            "host {name}: /healthz {:?} with Redis down\n{}",
            fleet.healthz(host),
            fleet.tails()
        );
        assert_eq!(fleet.metric(host, GAUGE), Some(1.0), "host {name}\n{}", fleet.tails());
    }

    fleet.redis_mut().start_again();
    for (host, (name, live)) in fleet.hosts().into_iter().enumerate() {
        assert!(
            poll_until(RECOVERY, || health_is(&fleet, host, "ok")),
            "host {name}: /healthz {:?} with Redis back\n{}",
            fleet.healthz(host),
            fleet.tails()
        );
        assert_eq!(fleet.metric(host, GAUGE), Some(0.0), "host {name}\n{}", fleet.tails());
        let outcome = fleet.send(&live.submission("alice@example.com", &["x@remote.test"], &format!("back-{name}")));
        assert_accepted(&outcome);
    }
    assert_delivered(&fleet, [2, 2]);
}
