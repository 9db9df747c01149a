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
//! Policy (no milter protocol in it, unit-tested on its own):
//! - [`config`]: the TOML configuration, value types and validation;
//! - [`identity`]: who is sending (SASL login, trusted header, envelope, client);
//! - [`limiter`]: keyed buckets with a strict N-per-window bound, peek and commit;
//! - [`policy`]: rules, overrides, counting accepted mail, automatic locking;
//! - [`lockfile`]: the lock list's format and atomic, locked updates;
//! - [`locks`]: locks in force, the background writer and the file watcher;
//! - [`reply`]: SMTP reply templates;
//! - [`clock`]: real or manual time.
//! - [`notify`]: lock notifications (command and mail), off the mail path.
//!
//! Milter adapter and daemon:
//! - [`session`]: one MTA connection's stages turned into policy calls;
//! - [`callbacks`]: indymilter negotiation and thin stage callbacks;
//! - [`listener`]: socket specs, stale sockets, TCP_QUICKACK;
//! - [`daemon`]: background tasks, reload, shutdown;
//! - [`cli`]: the command line (subcommands and options);
//! - [`admin`]: `check-config` and `locks` commands;
//! - [`logging`]: text or JSON logs on stderr.
//!
//! Observability and incident tools:
//! - [`activity`]: bounded per-identity activity registry (minute, hour, 48 h);
//! - [`metrics`]: the verdict observer and the Prometheus exposition;
//! - [`status`]: the optional HTTP status listener (`/metrics`, `/healthz`, `/api`);
//! - [`status_client`]: `top`, `explain`, `report` over the status listener;
//! - [`queue`]: `queue hold|release` through Postfix's postqueue, postcat and postsuper.

#![forbid(unsafe_code)]

pub mod activity;
pub mod admin;
pub mod callbacks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod limiter;
pub mod listener;
pub mod lockfile;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod queue;
pub mod reply;
pub mod session;
pub mod status;
pub mod status_client;
