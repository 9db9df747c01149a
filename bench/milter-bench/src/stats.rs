// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Counters and latency histograms, kept per task and merged at the end.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::time::Duration;

/// Stages whose reply latency is measured on its own.
pub const STAGES: [&str; 4] = ["mail", "rcpt", "eoh", "eom"];

pub struct Stats {
    /// MAIL sent to the final answer for the message, in nanoseconds.
    pub message: Histogram<u64>,
    /// One histogram per entry of [`STAGES`]: command sent to its reply.
    pub stages: Vec<Histogram<u64>>,
    /// Messages the milter let through (continue or accept).
    pub accepted: u64,
    pub tempfail: u64,
    pub reject: u64,
    pub discard: u64,
    /// Accepted messages the milter put on hold (quarantine).
    pub held: u64,
    /// Recipients refused while the message itself went on.
    pub rcpt_refused: u64,
    /// Connections that failed (I/O error, protocol error, timeout).
    pub errors: u64,
    pub connections: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits (values are nanoseconds).
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            message: histogram(),
            stages: STAGES.iter().map(|_| histogram()).collect(),
            accepted: 0,
            tempfail: 0,
            reject: 0,
            discard: 0,
            held: 0,
            rcpt_refused: 0,
            errors: 0,
            connections: 0,
        }
    }
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1, h.high());
    h.saturating_record(ns);
}

impl Stats {
    pub fn merge(&mut self, other: &Stats) {
        self.message.add(&other.message).expect("same bounds");
        for (a, b) in self.stages.iter_mut().zip(&other.stages) {
            a.add(b).expect("same bounds");
        }
        self.accepted += other.accepted;
        self.tempfail += other.tempfail;
        self.reject += other.reject;
        self.discard += other.discard;
        self.held += other.held;
        self.rcpt_refused += other.rcpt_refused;
        self.errors += other.errors;
        self.connections += other.connections;
    }

    pub fn messages(&self) -> u64 {
        self.accepted + self.tempfail + self.reject + self.discard
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "mean_us": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
        "p50_us": us(h, 0.50),
        "p99_us": us(h, 0.99),
        "p999_us": us(h, 0.999),
        "max_us": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
    })
}

/// The result of a run.
pub struct Report<'a> {
    pub label: &'a str,
    pub negotiated: &'a str,
    pub stats: &'a Stats,
    pub elapsed: Duration,
}

impl Report<'_> {
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.messages() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Value {
        let s = self.stats;
        let stages: serde_json::Map<String, Value> = STAGES
            .iter()
            .zip(&s.stages)
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| ((*name).to_string(), percentiles(h)))
            .collect();
        json!({
            "label": self.label,
            "negotiated": self.negotiated,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages": s.messages(),
            "tps": self.throughput(),
            "accepted": s.accepted,
            "tempfail": s.tempfail,
            "reject": s.reject,
            "discard": s.discard,
            "held": s.held,
            "rcpt_refused": s.rcpt_refused,
            "errors": s.errors,
            "connections": s.connections,
            "latency": percentiles(&s.message),
            "stages": stages,
        })
    }

    pub fn text(&self) -> String {
        let s = self.stats;
        let mut out = format!(
            "{}: {} messages in {:.3} s = {:.0} msg/s over {} connections\n\
             replies: accepted {} (held {}), tempfail {}, reject {}, discard {}; recipients refused {}; errors {}\n",
            self.label,
            s.messages(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            s.connections,
            s.accepted,
            s.held,
            s.tempfail,
            s.reject,
            s.discard,
            s.rcpt_refused,
            s.errors,
        );
        let line = |name: &str, h: &Histogram<u64>| {
            format!(
                "  {name:<8} p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  max {:>9.1} us  (n={})\n",
                us(h, 0.5),
                us(h, 0.99),
                us(h, 0.999),
                if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
                h.len()
            )
        };
        out.push_str(&format!("  negotiated: {}\n", self.negotiated));
        out.push_str(&line("message", &s.message));
        for (name, h) in STAGES.iter().zip(&s.stages) {
            if !h.is_empty() {
                out.push_str(&line(name, h));
            }
        }
        out
    }
}
