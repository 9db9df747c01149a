// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The seam for counters shared by a fleet of MTAs (`[store] backend =
//! "redis"`): what the policy asks of them, once per decision point.
//!
//! A decision (MAIL, a RCPT, the end of the headers, the end of the message)
//! is one [`SharedCounters::apply`] call carrying every bucket it touches,
//! so a backend can evaluate it atomically in one round trip. The backend
//! computes exactly the arithmetic of [`crate::policy::limiter`] (in
//! microseconds), so the same rules and the same arrival times give the same
//! verdicts as the in-memory counters.
//!
//! The policy falls back to its in-memory counters, with the degraded limits
//! (`store.fleet_size`), when `apply` fails: a backend must fail fast (it
//! bounds its own wait) rather than make mail wait.

use crate::policy::limiter::{Limit, Outcome, Usage};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, as an object-safe trait method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an operation does with its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Would `n` more fit? Changes nothing.
    Peek,
    /// Counts `n` if they fit (an attempt against a lock rule).
    Count,
    /// Counts `n` if they fit, and only if no blocking [`OpKind::Commit`]
    /// of the same call is exceeded: then the call counts no commit at all.
    Commit {
        /// Exceeding this bucket refuses the message (an enforced rule that
        /// tempfails or rejects), so it stops the whole commit.
        blocks: bool,
    },
}

/// One bucket of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedOp {
    /// What is counted: the normalised identity, or a domain.
    pub subject: String,
    /// Whether `subject` is a domain (a rule `per = "domain"`).
    pub domain: bool,
    /// The group the bucket belongs to: the identity's domain, or the
    /// identity itself when it has none. Everything one decision touches for
    /// one identity is in one group (a Redis Cluster hash slot).
    pub group: String,
    /// The rule's counter: a name that changes whenever the rule's
    /// definition does, so that hosts (and reloads) never share a bucket
    /// under two different limits.
    pub counter: String,
    pub limit: Limit,
    pub n: u32,
    pub kind: OpKind,
    /// How long the subject's buckets must be kept after a count: two of
    /// the longest window of any rule counting in them, and a slot.
    pub ttl: Duration,
}

/// The answer for one [`SharedOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpAnswer {
    pub outcome: Outcome,
    /// The bucket after the operation; only for an operation that does not
    /// fit, or that asks for nothing (`n` = 0, for explain). The policy
    /// shows usage for nothing else.
    pub usage: Usage,
}

/// The shared store could not answer in time; the policy degrades.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Counters shared by a fleet.
pub trait SharedCounters: Send + Sync {
    /// Applies the operations of one decision, in order and atomically: an
    /// operation sees what the ones before it counted. One answer per
    /// operation, in the same order.
    fn apply<'a>(&'a self, ops: &'a [SharedOp]) -> BoxFuture<'a, Result<Vec<OpAnswer>, Unavailable>>;

    /// Empties every bucket of `subject` (an identity an admin unlocked).
    fn forget<'a>(&'a self, subject: &'a str, group: &'a str) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// Whether the store is answering now (false while the policy uses its
    /// local counters).
    fn available(&self) -> bool;
}
