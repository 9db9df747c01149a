// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The [`Observer`]: what the session reports of each verdict, kept as
//! Prometheus counters (bounded labels: rule and action, never identities)
//! and in the per-identity [`ActivityRegistry`].
//!
//! Every counter is an atomic; the only map on the hot path (refusals by
//! rule) is a dashmap keyed by the rule name, read without allocating. The
//! text exposition is written by `prometheus-client` at scrape time.

use crate::clock::Clock;
use crate::config::Action;
use crate::ops::activity::{ActivityRegistry, Event};
use dashmap::DashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The milter stage a decision was made in (label `stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Mail = 0,
    Rcpt = 1,
    Eoh = 2,
    Eom = 3,
    /// The sum of the stages above for one transaction that reached the
    /// end of the message: the policy's whole cost of one message.
    Message = 4,
}

const STAGES: [(Stage, &str); 5] = [
    (Stage::Mail, "mail"),
    (Stage::Rcpt, "rcpt"),
    (Stage::Eoh, "eoh"),
    (Stage::Eom, "eom"),
    (Stage::Message, "message"),
];

/// Upper bounds of the decision latency buckets, in nanoseconds.
const LATENCY_BOUNDS_NS: [u64; 12] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// A histogram of atomics (prometheus-client's own takes a mutex per observation).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BOUNDS_NS.iter().position(|&b| ns <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The `action` label of a refusal: what the MTA was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Tempfail,
    Reject,
    /// Put on hold, with the message's recipients.
    Hold {
        recipients: u32,
    },
}

impl Refusal {
    /// Its `action` label and the index of its counter.
    fn label(self) -> (usize, &'static str) {
        match self {
            Refusal::Tempfail => (0, "tempfail"),
            Refusal::Reject => (1, "reject"),
            Refusal::Hold { .. } => (2, "hold"),
        }
    }
}

const REFUSALS: [Refusal; 3] = [Refusal::Tempfail, Refusal::Reject, Refusal::Hold { recipients: 0 }];

/// Index of a rule action in the not-enforced counters.
fn action_index(a: Action) -> usize {
    match a {
        Action::Log => 0,
        Action::Tempfail => 1,
        Action::Reject => 2,
        Action::Lock => 3,
    }
}

const ACTIONS: [&str; 4] = ["log", "tempfail", "reject", "lock"];

#[derive(Debug, Default)]
struct RuleCounters {
    refused: [AtomicU64; 3],
    not_enforced: [AtomicU64; 4],
}

/// MTA connections that found every slot taken (`max_connections`), as the
/// connection guard (`milter/watchdog.rs`) counts them. Counted whether or
/// not the observer is enabled: a few atomics per waiting connection.
#[derive(Debug, Default)]
pub struct SlotWaits {
    /// Waited, then got a slot when a session ended.
    pub served: AtomicU64,
    /// Closed by the MTA while waiting: its `milter_command_timeout` ran
    /// out, and it applied `milter_default_action` to the SMTP session.
    pub gave_up: AtomicU64,
    /// Waiting now, among those the guard holds.
    pub waiting: AtomicU64,
}

/// The content scanner's scans, failures and state (`[scanner]`). Counted
/// whether or not the observer is enabled: a few atomics per message, and
/// /healthz reads the state.
#[derive(Debug, Default)]
pub struct ScannerStats {
    /// Scans by [`SCAN_VERDICTS`].
    verdicts: [AtomicU64; 4],
    /// Messages over `scanner.max_message_size`, scanned on their first
    /// `max_message_size` bytes.
    truncated: AtomicU64,
    /// Failures by [`crate::scan::CAUSES`].
    errors: [AtomicU64; 5],
    /// The last exchange failed (until one succeeds), and why.
    degraded: std::sync::Mutex<Option<String>>,
    /// Time spent waiting for verdicts, in microseconds, over `waits`.
    wait_us: AtomicU64,
    waits: AtomicU64,
}

/// The `verdict` labels of `egress_milter_scans_total`.
pub const SCAN_VERDICTS: [&str; 4] = ["ham", "spam", "phishing", "virus"];

impl ScannerStats {
    /// A verdict came back after `waited`: the scanner works.
    pub fn scanned(&self, verdict: &str, waited: Duration) {
        if let Some(i) = SCAN_VERDICTS.iter().position(|v| *v == verdict) {
            self.verdicts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.wait_us
            .fetch_add(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.degraded.lock() {
            *d = None;
        }
    }

    /// A message over `scanner.max_message_size`, scanned on its first
    /// `max_message_size` bytes.
    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Ordering::Relaxed);
    }

    /// No verdict: `cause` is a [`crate::scan::CAUSES`] label, `why` what
    /// /healthz says until the next verdict.
    pub fn failed(&self, cause: &str, waited: Duration, why: String) {
        if let Some(i) = crate::scan::CAUSES.iter().position(|c| *c == cause) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        self.wait_us
            .fetch_add(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.degraded.lock() {
            *d = Some(why);
        }
    }

    /// Why the scanner is degraded, if the last exchange failed.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.lock().ok().and_then(|d| d.clone())
    }
}

/// Counts verdicts; shared by every policy snapshot of a running daemon.
pub struct Observer {
    enabled: bool,
    activity: ActivityRegistry,
    seen: AtomicU64,
    /// Transactions outside `[scope]`, passed untouched.
    out_of_scope: AtomicU64,
    /// Failed recipients in the MTA's bounces, charged to an identity or not.
    bounces_charged: AtomicU64,
    bounces_uncharged: AtomicU64,
    accepted: AtomicU64,
    recipients: AtomicU64,
    rules: DashMap<Box<str>, RuleCounters>,
    latency: [Histogram; 5],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    slot_waits: SlotWaits,
    scanner: ScannerStats,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("enabled", &self.enabled).finish()
    }
}

/// The pseudo-rule of refusals because the identity is locked.
pub const RULE_LOCKED: &str = "locked";
/// The pseudo-rule of `limits.max_recipients_per_message`.
pub const RULE_MAX_RECIPIENTS: &str = "max_recipients_per_message";
/// The pseudo-rule of a locked identity's mail refused because
/// `locks.hold_limit` held enough of it already.
pub const RULE_HOLD_LIMIT: &str = "hold_limit";
/// The pseudo-rule of differing identity headers.
pub const RULE_CONFLICT: &str = "identity_conflict";

impl Observer {
    /// An observer that records; `cap` bounds the activity registry.
    pub fn new(clock: Clock, cap: usize) -> Self {
        Self::build(true, clock, cap)
    }

    /// An observer that records nothing (no status listener configured).
    pub fn disabled() -> Self {
        Self::build(false, Clock::real(), 1)
    }

    fn build(enabled: bool, clock: Clock, cap: usize) -> Self {
        Self {
            enabled,
            activity: ActivityRegistry::new(clock, cap),
            seen: AtomicU64::new(0),
            out_of_scope: AtomicU64::new(0),
            bounces_charged: AtomicU64::new(0),
            bounces_uncharged: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            rules: DashMap::new(),
            latency: Default::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            slot_waits: SlotWaits::default(),
            scanner: ScannerStats::default(),
        }
    }

    /// The content scanner's figures.
    pub fn scanner(&self) -> &ScannerStats {
        &self.scanner
    }

    /// The waits for a connection slot, for the connection guard to count.
    pub fn slot_waits(&self) -> &SlotWaits {
        &self.slot_waits
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn activity(&self) -> &ActivityRegistry {
        &self.activity
    }

    /// Starts timing a stage's decision (`None` when disabled).
    pub fn start(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    /// Ends timing a stage's decision started with [`Observer::start`];
    /// returns how long it took (zero when disabled), for [`Observer::message`].
    pub fn finish(&self, stage: Stage, started: Option<Instant>) -> Duration {
        let Some(start) = started else {
            return Duration::ZERO;
        };
        let took = start.elapsed();
        self.latency[stage as usize].observe(took);
        took
    }

    /// A transaction reached the end of the message after `decided` spent
    /// deciding over all its stages.
    pub fn message(&self, decided: Duration) {
        if self.enabled {
            self.latency[Stage::Message as usize].observe(decided);
        }
    }

    /// A transaction began (MAIL FROM).
    pub fn seen(&self) {
        if self.enabled {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A transaction outside `[scope]` (inbound mail): passed untouched.
    /// Counted even with the observer disabled, it is that cheap.
    pub fn out_of_scope(&self) {
        self.out_of_scope.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was accepted.
    pub fn accepted(&self, identity: &str, recipients: u32, queue_id: &str) {
        if !self.enabled {
            return;
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.recipients.fetch_add(u64::from(recipients), Ordering::Relaxed);
        self.activity.record(identity, Event::Accepted { recipients }, queue_id);
    }

    /// A refusal or a hold because of `rule` (or a pseudo-rule such as
    /// [`RULE_LOCKED`]); `identity` is `None` when it is not known.
    pub fn refused(&self, identity: Option<&str>, rule: &str, how: Refusal, queue_id: &str) {
        if !self.enabled {
            return;
        }
        self.rule(rule, |c| {
            c.refused[how.label().0].fetch_add(1, Ordering::Relaxed);
        });
        if let Some(identity) = identity {
            let event = match how {
                Refusal::Tempfail => Event::Tempfailed,
                Refusal::Reject => Event::Rejected,
                Refusal::Hold { recipients } => Event::Held { recipients },
            };
            self.activity.record(identity, event, queue_id);
        }
    }

    /// One of the MTA's bounces reported `failed` recipients of a message
    /// of `identity` (`None`: of a message it did not count).
    pub fn bounce(&self, identity: Option<&str>, failed: u32) {
        if !self.enabled {
            return;
        }
        let counter = if identity.is_some() {
            &self.bounces_charged
        } else {
            &self.bounces_uncharged
        };
        counter.fetch_add(u64::from(failed), Ordering::Relaxed);
        if let Some(identity) = identity {
            self.activity.record(identity, Event::Bounced { failed }, "");
        }
    }

    /// A rule was exceeded but only logged (`action = "log"`, or dry-run).
    pub fn not_enforced(&self, rule: &str, would: Action) {
        if self.enabled {
            self.rule(rule, |c| {
                c.not_enforced[action_index(would)].fetch_add(1, Ordering::Relaxed);
            });
        }
    }

    /// A configuration reload finished.
    pub fn reloaded(&self, ok: bool) {
        let c = if ok { &self.reloads_ok } else { &self.reloads_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn rule(&self, rule: &str, f: impl FnOnce(&RuleCounters)) {
        if let Some(c) = self.rules.get(rule) {
            return f(&c);
        }
        // Rule names are bounded by the configuration (and a few pseudo-rules).
        f(&self.rules.entry(rule.into()).or_default());
    }
}

/// Values read at scrape time from outside the observer.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub locks_active: u64,
    pub locks_pending_write: u64,
    pub locks_added_auto: u64,
    pub locks_added_manual: u64,
    pub lock_write_errors: u64,
    pub lock_list_corrupt: bool,
    /// What became of lock notifications: each `outcome` label of
    /// `egress_milter_notifications_total` with its count
    /// ([`crate::notify::Stats::outcomes`]).
    pub notifications: Vec<(&'static str, u64)>,
    /// The fleet store's figures; `None` with the in-memory store.
    pub store: Option<StoreGauges>,
    /// A content scanner is configured: its figures are shown.
    pub scanner: bool,
}

/// `[store] backend = "redis"`: how the shared store is doing.
#[derive(Clone, Debug, Default)]
pub struct StoreGauges {
    pub degraded: bool,
    pub decisions: u64,
    pub degraded_decisions: u64,
    pub errors: u64,
    pub locks_pushed: u64,
    pub locks_pulled: u64,
}

/// The text exposition (OpenMetrics, which Prometheus reads) of everything.
pub fn encode(observer: &Arc<Observer>, gauges: Gauges) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("egress_milter");
    registry.register_collector(Box::new(Exposition {
        observer: observer.clone(),
        gauges,
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Exposition {
    observer: Arc<Observer>,
    gauges: Gauges,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(e.encode_descriptor(
        name,
        help,
        None,
        MetricType::Gauge,
    )?)
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let o = &self.observer;
        let g = &self.gauges;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut e,
            "messages_seen",
            "Transactions the milter saw (MAIL FROM).",
            load(&o.seen),
        )?;
        counter(
            &mut e,
            "messages_out_of_scope",
            "Transactions outside [scope] (not authenticated, not local, not from scope.networks or identity.trusted_networks: inbound mail), passed untouched and counted nowhere else.",
            load(&o.out_of_scope),
        )?;
        counter(
            &mut e,
            "bounced_recipients_charged",
            "Failed recipients in the MTA's bounces (internal_mail_filter_classes = bounce) charged to the identity that sent the message.",
            load(&o.bounces_charged),
        )?;
        counter(
            &mut e,
            "bounced_recipients_uncharged",
            "Failed recipients in the MTA's bounces of messages this milter did not count or no longer remembers (limits.max_tracked_messages).",
            load(&o.bounces_uncharged),
        )?;
        counter(
            &mut e,
            "messages_accepted",
            "Messages accepted at end of message.",
            load(&o.accepted),
        )?;
        counter(
            &mut e,
            "recipients_accepted",
            "Recipients of accepted messages.",
            load(&o.recipients),
        )?;

        let mut rules: Vec<(String, [u64; 3], [u64; 4])> = o
            .rules
            .iter()
            .map(|r| {
                (
                    r.key().to_string(),
                    r.refused.each_ref().map(load),
                    r.not_enforced.each_ref().map(load),
                )
            })
            .collect();
        rules.sort();
        {
            let mut m = e.encode_descriptor(
                "refusals",
                "Refusals (4xx, 5xx) and holds, by rule (or locked, max_recipients_per_message, identity_conflict) and by what the MTA was told.",
                None,
                MetricType::Counter,
            )?;
            for (rule, refused, _) in &rules {
                for how in REFUSALS {
                    let (index, name) = how.label();
                    let v = refused[index];
                    if v > 0 {
                        let labels = [("rule", rule.as_str()), ("action", name)];
                        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "not_enforced",
                "Rules exceeded but only logged (action = log, or mode = dry-run), by rule and the action it would take.",
                None,
                MetricType::Counter,
            )?;
            for (rule, _, skipped) in &rules {
                for (i, name) in ACTIONS.iter().enumerate() {
                    if skipped[i] > 0 {
                        let labels = [("rule", rule.as_str()), ("action", *name)];
                        ConstCounter::new(skipped[i]).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "decision_seconds",
                "Time spent deciding in each milter stage, and over all stages of a message that reached its end (stage=\"message\"): policy and bookkeeping, not the network.",
                None,
                MetricType::Histogram,
            )?;
            for (stage, name) in STAGES {
                let h = &o.latency[stage as usize];
                let mut cumulative = 0;
                let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_NS
                    .iter()
                    .zip(&h.buckets)
                    .map(|(&b, n)| {
                        cumulative += load(n);
                        (b as f64 / 1e9, load(n))
                    })
                    .collect();
                let count = load(&h.count);
                buckets.push((f64::INFINITY, count.saturating_sub(cumulative)));
                let labels = [("stage", name)];
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        load(&h.sum_ns) as f64 / 1e9,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }
        gauge(
            &mut e,
            "locks_active",
            "Locks in force (lock list and not yet written).",
            g.locks_active,
        )?;
        gauge(
            &mut e,
            "locks_pending_write",
            "Automatic locks not yet written to the lock list.",
            g.locks_pending_write,
        )?;
        {
            let mut m = e.encode_descriptor(
                "locks_added",
                "Locks added: auto by a lock rule, manual from the lock list (CLI or editor).",
                None,
                MetricType::Counter,
            )?;
            for (source, v) in [("auto", g.locks_added_auto), ("manual", g.locks_added_manual)] {
                ConstCounter::new(v).encode(m.encode_family(&[("source", source)])?)?;
            }
        }
        counter(
            &mut e,
            "lock_write_errors",
            "Failed attempts to write the lock list.",
            g.lock_write_errors,
        )?;
        gauge(
            &mut e,
            "lock_list_corrupt",
            "1 when the lock list on disk does not parse and the last good list is in force.",
            u64::from(g.lock_list_corrupt),
        )?;
        gauge(
            &mut e,
            "tracked_identities",
            "Identities in the activity registry (the overflow row not included).",
            o.activity.len() as u64,
        )?;
        gauge(
            &mut e,
            "tracked_identities_cap",
            "status.max_identities.",
            o.activity.cap() as u64,
        )?;
        {
            let mut m = e.encode_descriptor(
                "notifications",
                "Lock notifications ([notify]) by outcome: dropped (queue full), duplicate, suppressed (max_per_hour), command ok/failed/killed, mail sent/failed, ARF sent/failed.",
                None,
                MetricType::Counter,
            )?;
            for &(outcome, v) in &g.notifications {
                ConstCounter::new(v).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        if let Some(st) = &g.store {
            gauge(
                &mut e,
                "store_degraded",
                "1 while Redis is unavailable and this host decides on local counters at the degraded limits.",
                u64::from(st.degraded),
            )?;
            {
                let mut m = e.encode_descriptor(
                    "store_decisions",
                    "Decisions by where they were counted: shared (one Redis round trip each) or local (Redis unavailable).",
                    None,
                    MetricType::Counter,
                )?;
                for (on, v) in [("shared", st.decisions), ("local", st.degraded_decisions)] {
                    ConstCounter::new(v).encode(m.encode_family(&[("counters", on)])?)?;
                }
            }
            counter(
                &mut e,
                "store_errors",
                "Calls to Redis that failed or timed out.",
                st.errors,
            )?;
            {
                let mut m = e.encode_descriptor(
                    "store_lock_changes",
                    "Lock changes sent to the fleet (pushed) and taken from it (pulled).",
                    None,
                    MetricType::Counter,
                )?;
                for (way, v) in [("pushed", st.locks_pushed), ("pulled", st.locks_pulled)] {
                    ConstCounter::new(v).encode(m.encode_family(&[("direction", way)])?)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "connection_waits",
                "MTA connections that found max_connections reached and waited: until a session ended and gave them a slot (slot), or until the MTA closed them (gave_up: its milter_command_timeout ran out and it applied milter_default_action).",
                None,
                MetricType::Counter,
            )?;
            let w = &o.slot_waits;
            for (outcome, v) in [("slot", load(&w.served)), ("gave_up", load(&w.gave_up))] {
                ConstCounter::new(v).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        gauge(
            &mut e,
            "connections_waiting",
            "MTA connections waiting for a slot now (max_connections reached), of those the daemon holds (at most 128; more wait in the kernel's listen queue).",
            load(&o.slot_waits.waiting),
        )?;
        if g.scanner {
            let sc = &o.scanner;
            {
                let mut m = e.encode_descriptor(
                    "scans",
                    "Messages handed to the content scanner ([scanner]), by verdict (ham, spam, phishing, virus: the worst it feeds).",
                    None,
                    MetricType::Counter,
                )?;
                for (verdict, v) in SCAN_VERDICTS.iter().zip(&sc.verdicts) {
                    ConstCounter::new(load(v)).encode(m.encode_family(&[("verdict", *verdict)])?)?;
                }
            }
            counter(
                &mut e,
                "scans_truncated",
                "Messages over scanner.max_message_size, handed to the scanner cut to their first max_message_size bytes (also counted in scans by their verdict).",
                load(&sc.truncated),
            )?;
            {
                let mut m = e.encode_descriptor(
                    "scanner_errors",
                    "Messages passed unscanned because the scanner failed, by cause: connect (unreachable), timeout (scanner.timeout), http (exchange broken), status (not 200), parse (not rspamd's JSON).",
                    None,
                    MetricType::Counter,
                )?;
                for (cause, v) in crate::scan::CAUSES.iter().zip(&sc.errors) {
                    ConstCounter::new(load(v)).encode(m.encode_family(&[("cause", *cause)])?)?;
                }
            }
            gauge(
                &mut e,
                "scanner_degraded",
                "1 after the content scanner failed, until its next verdict: messages pass unscanned meanwhile.",
                u64::from(sc.degraded().is_some()),
            )?;
            ConstCounter::new(load(&sc.wait_us) as f64 / 1e6).encode(e.encode_descriptor(
                "scanner_wait_seconds",
                "Time the end of message waited for the scanner, over scanner_waits exchanges (verdicts and failures).",
                None,
                MetricType::Counter,
            )?)?;
            counter(
                &mut e,
                "scanner_waits",
                "Exchanges with the scanner, verdicts and failures.",
                load(&sc.waits),
            )?;
        }
        {
            let mut m = e.encode_descriptor(
                "config_reloads",
                "Configuration reloads (SIGHUP), by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [("ok", load(&o.reloads_ok)), ("failed", load(&o.reloads_failed))] {
                ConstCounter::new(v).encode(m.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_bounded_labels_and_exact_counts() {
        let o = Arc::new(Observer::new(Clock::manual(), 10));
        o.seen();
        o.seen();
        o.accepted("a@x", 3, "Q1");
        o.refused(Some("b@x"), "per-minute", Refusal::Tempfail, "Q2");
        o.refused(Some("b@x"), "per-minute", Refusal::Tempfail, "Q3");
        o.refused(None, RULE_CONFLICT, Refusal::Reject, "Q4");
        o.not_enforced("soft", Action::Tempfail);
        let t = o.start();
        let took = o.finish(Stage::Mail, t);
        o.message(took + Duration::from_micros(150));
        o.reloaded(false);
        o.slot_waits().gave_up.fetch_add(2, Ordering::Relaxed);
        o.slot_waits().waiting.store(3, Ordering::Relaxed);
        let text = encode(
            &o,
            Gauges {
                locks_active: 2,
                locks_added_auto: 1,
                notifications: vec![("command_ok", 1), ("command_failed", 0), ("mail_sent", 2)],
                ..Gauges::default()
            },
        )
        .unwrap();
        for line in [
            "egress_milter_messages_seen_total 2",
            "egress_milter_messages_accepted_total 1",
            "egress_milter_recipients_accepted_total 3",
            "egress_milter_refusals_total{rule=\"per-minute\",action=\"tempfail\"} 2",
            "egress_milter_refusals_total{rule=\"identity_conflict\",action=\"reject\"} 1",
            "egress_milter_not_enforced_total{rule=\"soft\",action=\"tempfail\"} 1",
            "egress_milter_decision_seconds_count{stage=\"mail\"} 1",
            "egress_milter_decision_seconds_count{stage=\"rcpt\"} 0",
            "egress_milter_decision_seconds_bucket{le=\"+Inf\",stage=\"mail\"} 1",
            "egress_milter_decision_seconds_count{stage=\"message\"} 1",
            "egress_milter_decision_seconds_bucket{le=\"0.0001\",stage=\"message\"} 0",
            "egress_milter_decision_seconds_bucket{le=\"0.0002\",stage=\"message\"} 1",
            "egress_milter_locks_active 2",
            "egress_milter_locks_added_total{source=\"auto\"} 1",
            "egress_milter_tracked_identities 2",
            "egress_milter_config_reloads_total{result=\"failed\"} 1",
            "egress_milter_notifications_total{outcome=\"command_ok\"} 1",
            "egress_milter_notifications_total{outcome=\"mail_sent\"} 2",
            "egress_milter_connection_waits_total{outcome=\"slot\"} 0",
            "egress_milter_connection_waits_total{outcome=\"gave_up\"} 2",
            "egress_milter_connections_waiting 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
        assert!(!text.contains("a@x") && !text.contains("b@x"), "no identity labels");
        assert_eq!(o.activity().get("b@x").unwrap().last_minute.tempfailed, 2);
    }

    #[test]
    fn a_disabled_observer_records_nothing() {
        let o = Arc::new(Observer::disabled());
        o.accepted("a@x", 1, "Q");
        o.seen();
        assert!(o.activity().is_empty());
        let text = encode(&o, Gauges::default()).unwrap();
        assert!(text.contains("egress_milter_messages_seen_total 0"), "{text}");
    }
}
