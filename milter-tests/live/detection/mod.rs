// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The detection benchmark (docs/benchmarks.md, "Detection"): a mix of
//! honest senders and attackers through the real Postfix of the live suite,
//! against the shipped example configuration (plus the site's overrides of
//! `fixtures/detection-site.toml`) with every window compressed, and per
//! style what got out before the lock, the time to lock, and the refusals
//! and locks of honest senders. It fails unless every attacker style is
//! locked and no honest sender is refused or locked.
//!
//! The world, all on loopback:
//!
//! ```text
//! people, newsletter, attackers ──SMTP+AUTH──▶ ┌──────────────────────┐
//!   (127.0.2.x, 127.0.3.x, 127.0.4.x,          │ Postfix under test   │──▶ sink (550 5.1.1 for
//!    the botnet 127.0.1.1-50)                  │  submission + relay  │     unknown.*@; Postfix
//! customer MTAs (Postfix, 127.0.0.3/.4) ─AUTH─▶│  smtpd_milters and   │     bounces them: DSNs
//! webmail relay (Postfix, 127.0.0.2) ─relay──▶ │  non_smtpd_milters   │     back through the
//! local users (sendmail as egress-web1/2) ───▶ │  pickup (stamped)    │     milter, to the sink)
//!                                              └──────────┬───────────┘
//!                                                         ▼
//!                                                   egress-milter
//! ```
//!
//! The short form (`EGRESS_MILTER_LIVE=1`, part of CI) compresses 30x; the
//! full form (`EGRESS_DETECTION_FULL=1` too, `bench/run-detection.sh`) 6x,
//! with larger populations. `EGRESS_DETECTION_OUT=FILE` writes the table.

// Shared with retries.rs, which runs one customer's MTA the same way.
pub(crate) mod actors;
pub(crate) mod compress;
pub(crate) mod report;
pub(crate) mod styles;
pub(crate) mod traffic;

use crate::egress::{EgressMilter, MilterConfig};
use crate::harness::{LiveMta, skip_unless_live};
use crate::local_door::LocalDoor;
use crate::postfix::{PostfixInstance, PostfixOptions, TRUSTED_UPSTREAM};
use crate::sink::ReceivedMessage;
use actors::{ACTOR_HEADER, Connections, DriverActor, DriverLog, Outcome, Timeline, run_driver};
use compress::{compress_config, postfix_retry_schedule};
use egress_milter::locks::file::LockList;
use report::{Row, RunInfo, SeenLock, decisions, lock_line, locked_in_first_pass, upstream_deliveries};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use styles::{CustomerMta, Kind, Populations, Styles, password};
use traffic::VolumeLimits;

/// Set to `1` (with `EGRESS_MILTER_LIVE=1`) for the full form.
pub const FULL_ENV: &str = "EGRESS_DETECTION_FULL";
/// A file to write the report to.
pub const OUT_ENV: &str = "EGRESS_DETECTION_OUT";
/// How often the lock list is read to time the locks.
const LOCK_POLL: Duration = Duration::from_millis(25);

/// One form of the benchmark.
#[derive(Clone, Copy, Debug)]
struct Form {
    name: &'static str,
    /// Windows (and Postfix's retry schedule) are divided by this.
    factor: u32,
    /// Real time the styles play for.
    horizon: Duration,
    /// Real time after the horizon for the queues to drain.
    drain: Duration,
    populations: Populations,
}

/// CI: an hour in two minutes. 30x, not more: a customer MTA's first pass
/// over a batch of 1000 takes this machine several seconds, which must stay
/// shorter than Postfix's first retry (5 minutes real, 10 s here).
const SHORT: Form = Form {
    name: "short",
    factor: 30,
    horizon: Duration::from_secs(60 * 60),
    drain: Duration::from_secs(30 * 60),
    populations: Populations {
        newsletter_messages: 600,
        many_logins: 5,
        relay_users: 20,
    },
};

/// bench/run-detection.sh: 90 minutes in 15, as the issue measures it.
const FULL: Form = Form {
    name: "full",
    factor: 6,
    horizon: Duration::from_secs(90 * 60),
    drain: Duration::from_secs(30 * 60),
    populations: Populations {
        newsletter_messages: 1500,
        many_logins: 10,
        relay_users: 40,
    },
};

impl Form {
    fn from_env() -> Form {
        if std::env::var(FULL_ENV).is_ok_and(|v| v == "1") {
            FULL
        } else {
            SHORT
        }
    }
}

/// The benchmark. See the module documentation and docs/benchmarks.md.
#[test]
fn detection_benchmark() {
    if skip_unless_live() {
        return;
    }
    let form = Form::from_env();
    let began = Instant::now();
    let bench = Bench::start(&form);
    let (rows, descriptions) = bench.run(&form);
    let info = RunInfo {
        form: form.name,
        factor: form.factor,
        horizon: form.horizon,
        wall: began.elapsed(),
        load: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        config: "conf/egress-milter.toml + milter-tests/live/fixtures/detection-site.toml".into(),
    };
    let table = report::markdown(&info, &rows, &descriptions);
    println!("\n{table}");
    if let Ok(path) = std::env::var(OUT_ENV) {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| r.verdict().err().map(|why| format!("{}: {why}", r.style)))
        .collect();
    assert!(
        failures.is_empty(),
        "the detection goal is missed (every attacker locked, no honest sender refused or locked):\n{}\n\n{table}",
        failures.join("\n")
    );
}

/// Everything the benchmark runs. Fields drop in order: the relaying MTAs
/// stop first, then the Postfix under test (and its sink), then the daemon.
struct Bench {
    customers: Vec<(CustomerMta, PostfixInstance)>,
    webmail: PostfixInstance,
    mta: LiveMta,
    milter: EgressMilter,
    styles: Styles,
    /// The local door, held (and pointing at `mta`) for the run.
    _door: LocalDoor,
}

impl Bench {
    fn start(form: &Form) -> Bench {
        let mut site = MilterConfig::example();
        append_site_overrides(site.table_mut());
        let limits = VolumeLimits::of(site.table(), form.horizon).unwrap_or_else(|e| panic!("{e}"));
        let mut compressed = site;
        let changed = compress_config(compressed.table_mut(), form.factor).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "detection: {} form, compressed {}x: {}",
            form.name,
            form.factor,
            changed.join("; ")
        );

        let milter = EgressMilter::start(&compressed);
        let socket = milter.socket();
        let logins = styles::logins(&form.populations);
        let mta = LiveMta::start(|o| {
            logins
                .iter()
                .fold(o.milter(&socket), |o, login| o.user(login, &password(login)))
                // Postfix's own bounces reach the milter too (the bounce
                // signal counts them), through the non-SMTP door.
                .main_cf("internal_mail_filter_classes = bounce")
                .main_cf(&format!("non_smtpd_milters = {socket}"))
                // The local styles' sendmail: pickup stamps the submitting
                // uid for the local-user and php-script sources.
                .local_submission()
        });
        // The local styles run sendmail as real users against this
        // instance: the local door's link points here for the whole run.
        let door = LocalDoor::claim(&mta.postfix);
        let webmail = relaying_postfix(
            "webmail",
            TRUSTED_UPSTREAM,
            mta.postfix.relay_port(),
            None,
            form.factor,
            &[],
        );
        let styles = styles::build(
            &form.populations,
            &limits,
            form.horizon,
            mta.postfix.submission_port(),
            webmail.relay_port(),
        );
        let customers = styles
            .customers
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    customer_postfix(c, mta.postfix.submission_port(), form.factor),
                )
            })
            .collect();
        Bench {
            customers,
            webmail,
            mta,
            milter,
            styles,
            _door: door,
        }
    }

    /// Injects the customers' batches (held), plays every style, waits for
    /// the queues, and sorts out what happened.
    fn run(&self, form: &Form) -> (Vec<Row>, Vec<(String, String)>) {
        for (customer, postfix) in &self.customers {
            inject_batch(customer, postfix);
        }
        let monitor = LockMonitor::new(self.milter.lock_file());
        let timeline = Timeline {
            start: Instant::now(),
            factor: form.factor,
            horizon: form.horizon,
        };
        let stop = AtomicBool::new(false);
        let (driver_logs, relay_log, releases) = thread::scope(|s| {
            let watching = s.spawn(|| monitor.watch(&stop));
            let drivers: Vec<Vec<_>> = self
                .styles
                .drivers
                .iter()
                .map(|style| {
                    style
                        .actors
                        .iter()
                        .map(|actor| s.spawn(|| run_driver(actor, &timeline, &stop)))
                        .collect()
                })
                .collect();
            let relay = s.spawn(|| run_driver(&self.styles.relay, &timeline, &stop));
            let releases: Vec<_> = self
                .customers
                .iter()
                .map(|(customer, postfix)| {
                    let (timeline, stop) = (&timeline, &stop);
                    s.spawn(move || {
                        let at = timeline.start + timeline.physical(customer.release);
                        timeline.sleep_until(at, stop);
                        let released = Instant::now();
                        postfix
                            .release_hold()
                            .unwrap_or_else(|e| panic!("{}: cannot release the batch: {e}", customer.style));
                        released
                    })
                })
                .collect();
            let driver_logs: Vec<Vec<DriverLog>> = drivers
                .into_iter()
                .map(|actors| {
                    actors
                        .into_iter()
                        .map(|h| h.join().expect("a driver actor panicked"))
                        .collect()
                })
                .collect();
            let relay_log = relay.join().expect("the relay's injector panicked");
            let releases: Vec<Instant> = releases
                .into_iter()
                .map(|h| h.join().expect("a release panicked"))
                .collect();
            self.drain(&timeline, form);
            stop.store(true, Ordering::Relaxed);
            watching.join().expect("the lock monitor panicked");
            (driver_logs, relay_log, releases)
        });
        eprintln!(
            "detection: played in {:?} ({} real)",
            timeline.start.elapsed(),
            report::minutes_seconds(timeline.now())
        );
        let evidence = Evidence::gather(self, &monitor);
        let mut rows = Vec::new();
        for (style, logs) in self.styles.drivers.iter().zip(&driver_logs) {
            let maildrop = if style.local() {
                self.mta
                    .postfix
                    .queue_dir()
                    .join("maildrop")
                    .read_dir()
                    .map_or(0, Iterator::count)
            } else {
                0
            };
            rows.push(evidence.driver_row(style, logs, &timeline, maildrop));
        }
        for ((customer, postfix), released) in self.customers.iter().zip(&releases) {
            rows.push(evidence.customer_row(
                customer,
                postfix,
                *released,
                &timeline,
                self.mta.postfix.submission_port(),
            ));
        }
        rows.push(evidence.relay_row(self, &relay_log, &timeline));
        let mut descriptions = self.styles.descriptions.clone();
        descriptions.sort_by_key(|(style, _)| rows.iter().position(|r| r.style == *style));
        (rows, descriptions)
    }

    /// Waits until every queue is empty, or until the drain time after the
    /// horizon has passed.
    fn drain(&self, timeline: &Timeline, form: &Form) {
        let deadline = form.horizon + form.drain;
        let queues: Vec<&PostfixInstance> = self
            .customers
            .iter()
            .map(|(_, p)| p)
            .chain([&self.webmail, &self.mta.postfix])
            .collect();
        while timeline.now() < deadline {
            let empty = queues.iter().all(|p| p.queue().map(|q| q.is_empty()).unwrap_or(false));
            if empty {
                return;
            }
            thread::sleep(Duration::from_millis(500));
        }
        eprintln!("detection: queues not empty at the end of the drain time");
    }
}

/// Appends the `[[override]]`s of `fixtures/detection-site.toml`.
fn append_site_overrides(config: &mut toml::Table) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("milter-tests/live/fixtures/detection-site.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let site: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let overrides = site
        .get("override")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let list = config
        .entry("override")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .expect("override is an array of tables");
    list.extend(overrides);
}

/// A private Postfix that relays everything to `upstream_port` on
/// 127.0.0.1 from `bind` (with AUTH if `sasl` is given), with Postfix's
/// retry schedule compressed `factor` times, taking its own users' mail on
/// its relay port from 127.0.0.2.
fn relaying_postfix(
    host: &str,
    bind: Ipv4Addr,
    upstream_port: u16,
    sasl: Option<(&str, &str)>,
    factor: u32,
    extra: &[&str],
) -> PostfixInstance {
    // The harness relays to its "sink" port: here, the Postfix under test.
    let mut options = PostfixOptions::new(upstream_port)
        .main_cf(&format!("myhostname = {host}.egress-test.invalid"))
        .main_cf(&format!("smtp_bind_address = {bind}"));
    for line in postfix_retry_schedule(factor) {
        options = options.main_cf(&line);
    }
    if let Some((login, password)) = sasl {
        options = options
            .main_cf("smtp_sasl_auth_enable = yes")
            .main_cf(&format!(
                "smtp_sasl_password_maps = inline:{{{{[127.0.0.1]:{upstream_port}={login}:{password}}}}}"
            ))
            // No TLS on loopback: plain AUTH PLAIN is fine here.
            .main_cf("smtp_sasl_security_options = noanonymous");
    }
    for line in extra {
        options = options.main_cf(line);
    }
    PostfixInstance::start(options).unwrap_or_else(|e| panic!("cannot start the {host} Postfix: {e}"))
}

/// A customer's own MTA: a Postfix that relays everything to the
/// submission port `submission` of the Postfix under test with AUTH as the
/// customer's login, from the customer's address, on Postfix's retry
/// schedule compressed `factor` times and otherwise at Postfix's defaults
/// (concurrency included). What the customer's application submits (from
/// 127.0.0.2) is held, to be released in one go; the DSNs it makes for its
/// own domain are discarded.
pub(crate) fn customer_postfix(customer: &CustomerMta, submission: u16, factor: u32) -> PostfixInstance {
    let own_domain = format!("transport_maps = inline:{{{}=discard:}}", customer.domain);
    let hold = "smtpd_end_of_data_restrictions = check_client_access inline:{127.0.0.2=HOLD}";
    let host = customer.domain.replace('.', "-");
    relaying_postfix(
        &host,
        customer.bind,
        submission,
        Some((&customer.login, &password(&customer.login))),
        factor,
        &[&own_domain, hold],
    )
}

/// Submits a customer's batch to its own MTA, which holds it, and waits
/// until all of it is on hold.
pub(crate) fn inject_batch(customer: &CustomerMta, postfix: &PostfixInstance) {
    let sessions = 4;
    let mut plans: Vec<Vec<_>> = vec![Vec::new(); sessions];
    for (i, message) in customer.batch.iter().enumerate() {
        plans[i % sessions].push(message.clone());
    }
    let injector = DriverActor {
        style: customer.style.clone(),
        auth: None,
        port: postfix.relay_port(),
        start: Duration::ZERO,
        sessions: plans,
        connections: Connections::Reused { per_connection: 100 },
        stop_when_locked: false,
        local_user: None,
    };
    let timeline = Timeline {
        start: Instant::now(),
        factor: 1,
        horizon: Duration::MAX,
    };
    let log = run_driver(&injector, &timeline, &AtomicBool::new(false));
    let refused = log.count(|o| *o != Outcome::Accepted);
    assert_eq!(
        refused, 0,
        "{}: its own MTA refused {refused} of the batch",
        customer.style
    );
    let n = customer.batch.len();
    let held = postfix
        .wait_for_queue(Duration::from_secs(60), |q| {
            q.iter().filter(|e| e.queue_name == "hold").count() == n
        })
        .expect("postqueue -j");
    assert!(
        held.is_some(),
        "{}: the batch of {n} is not on hold: {}",
        customer.style,
        postfix.log_tail(20)
    );
}

/// Reads the lock list every [`LOCK_POLL`] and notes when each identity
/// first appears in it.
pub(crate) struct LockMonitor {
    file: PathBuf,
    seen: Arc<Mutex<BTreeMap<String, Instant>>>,
}

impl LockMonitor {
    pub(crate) fn new(file: PathBuf) -> LockMonitor {
        LockMonitor {
            file,
            seen: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    pub(crate) fn watch(&self, stop: &AtomicBool) {
        loop {
            // A final read after the stop, so nothing set at the end is missed.
            let last = stop.load(Ordering::Relaxed);
            if let Ok(list) = LockList::read(&self.file, |s: &str| Ok(s.trim().to_lowercase())) {
                let now = Instant::now();
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                for entry in list.entries {
                    seen.entry(entry.identity).or_insert(now);
                }
            }
            if last {
                return;
            }
            thread::sleep(LOCK_POLL);
        }
    }

    pub(crate) fn seen(&self) -> BTreeMap<String, Instant> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the run left behind: the sink's messages by style, DSNs by
/// recipient, the daemon's log and the locks.
struct Evidence {
    by_style: HashMap<String, (usize, usize)>,
    /// Recipients bounced back (by DSN) to each address.
    dsns_to: HashMap<String, usize>,
    log: String,
    locks: BTreeMap<String, Instant>,
    /// Identities in the lock list at the end (`egress-milter locks list`).
    listed: Vec<String>,
}

impl Evidence {
    fn gather(bench: &Bench, monitor: &LockMonitor) -> Evidence {
        let mut by_style: HashMap<String, (usize, usize)> = HashMap::new();
        let mut dsns_to: HashMap<String, usize> = HashMap::new();
        for message in bench.mta.sink.messages() {
            match actor_of(&message) {
                Some(style) => {
                    let entry = by_style.entry(style).or_default();
                    entry.0 += 1;
                    entry.1 += message.rcpt_to.len();
                }
                None if message.mail_from.is_empty() => {
                    // A DSN: one Final-Recipient per recipient it bounces.
                    let failed = message
                        .text()
                        .lines()
                        .filter(|l| l.starts_with("Final-Recipient:"))
                        .count();
                    for rcpt in &message.rcpt_to {
                        *dsns_to.entry(rcpt.to_lowercase()).or_default() += failed;
                    }
                }
                None => {}
            }
        }
        let listed = bench.milter.locks().entries.into_iter().map(|e| e.identity).collect();
        Evidence {
            by_style,
            dsns_to,
            log: bench.milter.log(),
            locks: monitor.seen(),
            listed,
        }
    }

    fn delivered(&self, style: &str) -> (usize, usize) {
        self.by_style.get(style).copied().unwrap_or_default()
    }

    fn bounces_back(&self, senders: &[String]) -> usize {
        senders
            .iter()
            .map(|s| self.dsns_to.get(&s.to_lowercase()).copied().unwrap_or(0))
            .sum()
    }

    /// The locks of `identities`, timed from `first`.
    fn locks_of(&self, identities: &[String], first: Option<Instant>, timeline: &Timeline) -> Vec<SeenLock> {
        identities
            .iter()
            .filter_map(|identity| {
                let identity = identity.to_lowercase();
                let at = self.locks.get(&identity).copied().or_else(|| {
                    // In the final list but never seen by the monitor: at the end.
                    self.listed.contains(&identity).then(Instant::now)
                })?;
                let after = first.map_or(Duration::ZERO, |f| timeline.real(at.saturating_duration_since(f)));
                Some(SeenLock {
                    line: lock_line(&self.log, &identity),
                    identity,
                    after,
                })
            })
            .collect()
    }

    fn driver_row(&self, style: &styles::DriverStyle, logs: &[DriverLog], timeline: &Timeline, maildrop: usize) -> Row {
        let attempts: Vec<&actors::Attempt> = logs.iter().flat_map(|l| &l.attempts).collect();
        let count = |f: &dyn Fn(&Outcome) -> bool| attempts.iter().filter(|a| f(&a.outcome)).count();
        let first = logs.iter().filter_map(DriverLog::first).min();
        let last = logs.iter().filter_map(DriverLog::last).max();
        let planned: usize = style.actors.iter().map(DriverActor::planned).sum();
        let (delivered, delivered_recipients) = self.delivered(&style.name);
        let senders: Vec<String> = style
            .actors
            .iter()
            .flat_map(|a| a.sessions.iter().flatten().map(|m| m.mail_from.clone()))
            .filter(|s| !s.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut notes = Vec::new();
        let failed = count(&|o| matches!(o, Outcome::Failed(_)));
        if failed > 0 {
            notes.push(format!("{failed} conversations failed (counted as 5xx)"));
        }
        if style.kind != Kind::Attacker {
            if let (Some(first), Some(last)) = (first, last) {
                // The longest session, from its first message to its last.
                let planned_span = style
                    .actors
                    .iter()
                    .flat_map(|a| &a.sessions)
                    .map(|session| session.iter().skip(1).map(|m| m.gap).sum::<Duration>())
                    .max()
                    .unwrap_or_default();
                notes.push(format!(
                    "sent {} of {planned} planned messages over {} (planned {})",
                    attempts.len(),
                    report::minutes_seconds(timeline.real(last - first)),
                    report::minutes_seconds(planned_span)
                ));
            }
            let logs_all = DriverLog {
                attempts: attempts.iter().map(|a| (*a).clone()).collect(),
            };
            for (text, n) in logs_all.refusal_texts().into_iter().take(3) {
                notes.push(format!("{n} × `{text}`"));
            }
        }
        let mut row = Row {
            style: style.name.clone(),
            kind: style.kind,
            mta: false,
            identities: style.identities.clone(),
            planned,
            attempts: attempts.len(),
            accepted: count(&|o| *o == Outcome::Accepted),
            deliverable: attempts
                .iter()
                .filter(|a| a.outcome == Outcome::Accepted && a.deliverable)
                .count(),
            delivered,
            delivered_recipients,
            still_queued: 0,
            bounces_back: self.bounces_back(&senders),
            throttled: count(&|o| matches!(o, Outcome::Throttled(_))),
            refused: count(&|o| matches!(o, Outcome::Refused(_) | Outcome::Failed(_))),
            locked_replies: count(&|o| *o == Outcome::Locked),
            recipients_refused: attempts
                .iter()
                .map(|a| a.recipients_throttled + a.recipients_refused)
                .sum(),
            locks: self.locks_of(&style.identities, first, timeline),
            any_lock: style.any_lock,
            locked_in_first_pass: None,
            notes,
        };
        if style.local() {
            self.local_decisions(&mut row, maildrop);
        }
        row
    }

    /// A local style's sendmail took every message: what egress-milter
    /// told pickup (each refused message offered again at every scan is a
    /// new attempt) is in its log, under the style's identities.
    fn local_decisions(&self, row: &mut Row, maildrop: usize) {
        let mut decided = report::Decisions::default();
        for identity in &row.identities {
            let d = decisions(&self.log, identity);
            decided.accepted += d.accepted;
            decided.throttled += d.throttled;
            decided.rejected += d.rejected;
            decided.locked_refusals += d.locked_refusals;
        }
        row.notes.insert(
            0,
            format!(
                "{} sendmail runs (each exits 0); egress-milter decided {} attempts from pickup: {} accepted, {} \
                 throttled (left in the maildrop, offered again), {} rejected, {} refused as locked (bounced to \
                 the sender); {maildrop} still in the maildrop at the end",
                row.attempts,
                decided.attempts(),
                decided.accepted,
                decided.throttled,
                decided.rejected,
                decided.locked_refusals
            ),
        );
        if !row.locks.is_empty() {
            let who: Vec<&str> = row.locks.iter().map(|l| l.identity.as_str()).collect();
            row.notes.insert(
                1,
                format!(
                    "locked as {}; its rcpts bounced back include every message refused as locked (cleanup \
                     bounces it to the sender)",
                    who.join(", ")
                ),
            );
        }
        row.attempts = decided.attempts();
        row.accepted = decided.accepted;
        row.throttled = decided.throttled;
        row.refused += decided.rejected;
        row.locked_replies = decided.locked_refusals;
    }

    fn customer_row(
        &self,
        customer: &CustomerMta,
        postfix: &PostfixInstance,
        released: Instant,
        timeline: &Timeline,
        submission: u16,
    ) -> Row {
        let decided = decisions(&self.log, &customer.login);
        let upstream = upstream_deliveries(&postfix.log(), submission);
        let deliverable = customer.batch.iter().filter(|m| m.deliverable()).count();
        let (delivered, delivered_recipients) = self.delivered(&customer.style);
        let identities = vec![customer.login.clone()];
        let locks = self.locks_of(&identities, Some(released), timeline);
        let maillog = postfix.log();
        let first_pass = locked_in_first_pass(&maillog, submission);
        let mut notes = vec![format!(
            "egress-milter decided {} attempts: {} accepted, {} throttled, {} refused as locked; its MTA logged {} \
             sent, {} deferred, {} bounced",
            decided.attempts(),
            decided.accepted,
            decided.throttled,
            decided.locked_refusals,
            upstream.sent,
            upstream.deferred,
            upstream.bounced
        )];
        let left = postfix.queue().map(|q| q.len()).unwrap_or(0);
        if left > 0 {
            notes.push(format!("{left} messages still in its queue at the end"));
        }
        Row {
            style: customer.style.clone(),
            kind: customer.kind,
            mta: true,
            identities,
            planned: customer.batch.len(),
            attempts: decided.attempts(),
            accepted: decided.accepted,
            deliverable,
            delivered,
            delivered_recipients,
            still_queued: left,
            bounces_back: self.bounces_back(&[format!("orders@{}", customer.domain)]),
            throttled: upstream.deferred,
            refused: upstream.bounced - upstream.bounced_locked,
            locked_replies: upstream.bounced_locked,
            recipients_refused: 0,
            locks,
            any_lock: false,
            locked_in_first_pass: first_pass,
            notes,
        }
    }

    fn relay_row(&self, bench: &Bench, log: &DriverLog, timeline: &Timeline) -> Row {
        let identities = &bench.styles.relay_identities;
        let mut decided = report::Decisions::default();
        for identity in identities {
            let d = decisions(&self.log, identity);
            decided.accepted += d.accepted;
            decided.throttled += d.throttled;
            decided.rejected += d.rejected;
            decided.locked_refusals += d.locked_refusals;
        }
        let upstream = upstream_deliveries(&bench.webmail.log(), bench.mta.postfix.relay_port());
        let style = &bench.styles.relay.style;
        let (delivered, delivered_recipients) = self.delivered(style);
        let without_header = decisions(&self.log, &TRUSTED_UPSTREAM.to_string()).attempts();
        let senders: Vec<String> = identities.iter().skip(1).cloned().collect();
        Row {
            style: style.clone(),
            kind: Kind::Honest,
            mta: true,
            identities: identities.clone(),
            planned: bench.styles.relay.planned(),
            attempts: decided.attempts(),
            accepted: decided.accepted,
            deliverable: bench
                .styles
                .relay
                .sessions
                .iter()
                .flatten()
                .filter(|m| m.deliverable())
                .count(),
            delivered,
            delivered_recipients,
            still_queued: 0,
            bounces_back: self.bounces_back(&senders),
            throttled: upstream.deferred,
            refused: upstream.bounced - upstream.bounced_locked,
            locked_replies: upstream.bounced_locked,
            recipients_refused: 0,
            locks: self.locks_of(identities, log.first(), timeline),
            any_lock: false,
            locked_in_first_pass: None,
            notes: vec![format!(
                "{without_header} of its messages had no identity header (counted under {TRUSTED_UPSTREAM}); \
                 {} users",
                identities.len() - 1
            )],
        }
    }
}

/// The style a message at the sink belongs to (its [`ACTOR_HEADER`]); DSNs
/// have none.
fn actor_of(message: &ReceivedMessage) -> Option<String> {
    message.header(ACTOR_HEADER)
}
