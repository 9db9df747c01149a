// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! What every live test starts with: the `EGRESS_MILTER_LIVE` gate and
//! [`LiveMta`], a private Postfix relaying to its own SMTP sink.

#![allow(dead_code)] // harness API: not every helper is used by every test

use crate::postfix::{PostfixInstance, PostfixOptions};
use crate::sink::SmtpSink;

/// The variable that turns the live-MTA tests on (value `1`).
pub const LIVE_ENV: &str = "EGRESS_MILTER_LIVE";

/// True when the live tests are off: the caller returns at once. Prints why.
/// When they are on, a missing Postfix is not a reason to skip: starting
/// [`LiveMta`] then fails the test.
///
/// ```ignore
/// if skip_unless_live() {
///     return;
/// }
/// ```
pub fn skip_unless_live() -> bool {
    if std::env::var(LIVE_ENV).is_ok_and(|v| v == "1") {
        return false;
    }
    println!("skipped: set {LIVE_ENV}=1 (run milter-tests/install-deps.sh as root first)");
    true
}

/// A private Postfix and the sink it relays to. Fields drop in order:
/// Postfix stops before the sink goes away. The sink also writes every
/// message it receives to `DIR/sink/NNNN.eml` of the Postfix instance.
pub struct LiveMta {
    /// The Postfix instance.
    pub postfix: PostfixInstance,
    /// Where it delivers.
    pub sink: SmtpSink,
}

impl LiveMta {
    /// Starts a sink, then a Postfix relaying to it, configured by
    /// `configure` (which gets options already pointing at the sink).
    /// Panics with the reason (missing packages, not root, Postfix's log)
    /// when either cannot start: a live test must never pass without them.
    pub fn start(configure: impl FnOnce(PostfixOptions) -> PostfixOptions) -> LiveMta {
        let sink = SmtpSink::start().expect("live harness: cannot start the SMTP sink");
        let opts = configure(PostfixOptions::new(sink.port()));
        let postfix = PostfixInstance::start(opts).unwrap_or_else(|err| {
            panic!(
                "live harness: cannot start a private Postfix ({LIVE_ENV}=1 is set, so this is a failure, not a \
                 skip): {err}"
            )
        });
        // A copy of every delivered message in the instance directory, for
        // people watching a test (EGRESS_MILTER_LIVE_KEEP=1).
        sink.record_to(&postfix.dir().join("sink"))
            .expect("live harness: cannot create the sink's directory");
        LiveMta { postfix, sink }
    }
}
