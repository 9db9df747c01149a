// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! egress-milter: a milter that throttles and locks hijacked mail accounts on
//! an MTA's outbound path.
//!
//! The library exists so the binary can be tested; it makes no promise of a
//! stable API.
//!
//! # Layout
//!
//! The folders are the architecture; `milter-tests/layers.rs` fails the
//! suite if `policy/` or `locks/` import anything from the adapter, the
//! operations side or the admin tools, or if two parts import each other.
//!
//! What to decide (no milter protocol, no HTTP, no files but the lock list
//! behind [`locks::LockStore`]; unit-tested on its own):
//! - [`policy`]: rules, overrides, counting accepted mail and attempts,
//!   automatic locking; [`policy::identity`] (who is sending),
//!   [`policy::limiter`] (keyed GCRA buckets with peek and commit),
//!   [`policy::locked`] (what a locked identity may do at each stage),
//!   [`policy::reply`] (SMTP reply templates), [`policy::saved`] (the
//!   counters' save format, for a restart);
//! - [`locks`]: locks in force, the background writer and the file watcher;
//!   [`locks::file`] is the lock list's format and atomic, locked updates;
//! - [`config`]: the TOML configuration, value types ([`config::model`]),
//!   per-section validation ([`config::validate`]) and the one normal form
//!   of an identity ([`config::address`]);
//! - [`clock`]: real or manual time;
//! - [`users`]: local Unix users' names by uid, through NSS, cached and
//!   bounded in time (the identity of a local submission).
//!
//! The milter adapter, protocol in and verdicts out ([`milter`]):
//! - [`milter::callbacks`]: indymilter negotiation and thin stage callbacks;
//! - [`milter::session`]: one MTA connection's stages turned into policy calls;
//! - [`milter::content`]: the message kept for the content scanner, and
//!   the scanner asked and its failures reported;
//! - [`milter::listener`]: socket specs, stale sockets, TCP_QUICKACK;
//! - [`milter::watchdog`]: read and idle timeouts (a longer one while a
//!   message is uploaded), the connection count and the connections waiting
//!   for a slot, commands the milter library drops, oversized packets;
//! - [`milter::throttle`]: rate-limited log lines;
//! - [`milter::Reporting`]: where verdicts and new locks are reported;
//! - [`scan`]: the content scanner's client (rspamd over HTTP), asked at
//!   the end of a message for the content rules.
//!
//! Operations, off the mail path:
//! - [`ops`]: the activity registry, Prometheus metrics, the HTTP status
//!   listener and its typed answers ([`ops::api`], shared with the CLI);
//! - [`notify`]: lock notifications (command and mail);
//! - [`daemon`]: wires it all, runs the background tasks, reload, shutdown;
//! - [`store`]: where counters outlive the process ([`store::state_file`]:
//!   the memory backend's counters, saved at a clean stop, read at start);
//! - [`logging`]: text or JSON logs on stderr.
//!
//! The command line:
//! - [`cli`]: subcommands and options;
//! - [`admin`]: `check-config`, `locks`, `top`/`explain`/`report`
//!   ([`admin::client`]) and `queue hold|release` ([`admin::queue`]);
//!   [`admin::output`] prints for them all (a reader that went away, as
//!   after `| head`, ends a command quietly).

#![forbid(unsafe_code)]
// Commands print through admin::output, which ends quietly when the reader
// of a pipe is gone where `print!` panics; the daemon logs through tracing.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod locks;
pub mod logging;
pub mod milter;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod scan;
pub mod store;
pub mod users;

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Runs a future that never waits (the in-memory counters) to its end.
    pub fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }
}
