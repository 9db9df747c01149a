// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Shared state for a fleet of MTAs (`[store] backend = "redis"`): the
//! connection to Redis with its failure handling ([`link`]), the counters
//! behind the policy's [`SharedCounters`](crate::policy::shared::SharedCounters)
//! seam ([`counters`]), and the lock list kept in step across hosts
//! ([`lock_sync`]). See docs/fleet.md. For the memory backend,
//! [`state_file`]: the counters saved at a clean stop and read back at start.

pub mod counters;
pub mod link;
pub mod lock_sync;
pub mod state_file;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counts and states for metrics and `/healthz`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Decisions sent to Redis (one round trip each).
    pub decisions: AtomicU64,
    /// Calls to Redis that failed or timed out.
    pub errors: AtomicU64,
    /// Decisions made on the local counters because Redis was unavailable.
    pub degraded_decisions: AtomicU64,
    /// Redis is unavailable: the host uses its local counters.
    pub degraded: AtomicBool,
    /// Lock changes this host sent to Redis, and received from it.
    pub locks_pushed: AtomicU64,
    pub locks_pulled: AtomicU64,
}

impl StoreStats {
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

/// A key part with the characters that would end or open a Redis Cluster
/// hash tag (and the escape itself) percent-encoded, so that an identity
/// can never choose another slot's tag.
pub fn key_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_cannot_open_or_close_a_hash_tag() {
        assert_eq!(key_part("a@example.com"), "a@example.com");
        assert_eq!(key_part("x}{y%"), "x%7D%7By%25");
    }
}
