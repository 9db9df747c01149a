// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The command line: one definition that `--help`, the dispatcher in
//! `main.rs` and the generated man page (`egress-milter(8)`) all read.

use crate::config::{DEFAULT_CONFIG_PATH, DurationValue};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Throttles and locks hijacked mail accounts on the outbound path.
#[derive(Parser)]
#[command(name = "egress-milter", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG_PATH, value_name = "PATH")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the milter in the foreground (as systemd runs it).
    Run,
    /// Check the configuration and the lock list, then exit.
    CheckConfig,
    /// Review and change the lock list.
    Locks {
        #[command(subcommand)]
        command: LocksCommand,
    },
    /// Show the identities sending the most right now (from the status listener).
    Top {
        /// Identities shown.
        #[arg(long, short = 'n', default_value_t = 20)]
        count: usize,
        /// Order by messages (tried: accepted, refused or held) or by recipients.
        #[arg(long, default_value = "messages", value_parser = ["messages", "recipients"])]
        sort: String,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Print one table and exit.
        #[arg(long)]
        once: bool,
        /// With --once: print the JSON answer instead of a table.
        #[arg(long, requires = "once")]
        json: bool,
    },
    /// Show every rule's count for one identity, and its lock (from the status listener).
    Explain {
        /// The identity, as the milter resolves it (login, address or client address).
        identity: String,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per-identity totals over the last hours (from the status listener).
    Report {
        /// How far back, at most 48h (whole hours).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Print CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Clear an identity's counters now, without touching its lock (tells the running daemon).
    Reset {
        /// The identity whose counters start afresh.
        identity: String,
        /// Why (logged in the daemon's audit line).
        #[arg(long)]
        reason: String,
    },
    /// Print a users-file line (NAME:argon2id hash) for the review desk; the password is read from stdin.
    Passwd {
        /// The user name to log in with.
        user: String,
    },
    /// Act on an identity's mail already in Postfix's queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Put the identity's queued mail on hold (postsuper -h).
    Hold {
        /// The identity whose queued mail is held: mail with it as envelope sender,
        /// mail whose queue id the daemon recorded for it (status listener), and mail
        /// whose SASL login Postfix recorded in the queue file is it (postcat -e).
        identity: String,
        /// Show what would be held, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Postfix configuration directory of a non-default instance (postqueue/postcat/postsuper -c).
        #[arg(long, value_name = "DIR")]
        postfix_config: Option<PathBuf>,
    },
    /// Release the identity's held mail (postsuper -H).
    Release {
        /// The identity whose held mail is released (found as for `hold`).
        identity: String,
        /// Show what would be released, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Postfix configuration directory of a non-default instance (postqueue/postcat/postsuper -c).
        #[arg(long, value_name = "DIR")]
        postfix_config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum LocksCommand {
    /// List locked identities, newest first.
    List {
        /// Print JSON (one array of locks) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one lock in full.
    Show {
        /// The identity, as the milter resolves it (login, address or client address).
        identity: String,
    },
    /// Lock an identity, a whole domain (@example.com) or a client network (203.0.113.0/24) by hand.
    Add {
        /// The identity to lock (normalised as the milter does), @domain or network.
        identity: String,
        /// Why (shown to admins, kept in the lock list).
        #[arg(long)]
        reason: String,
        /// Lift the lock by itself after this long, e.g. 24h or 7d.
        #[arg(long, value_name = "DURATION")]
        expires: Option<DurationValue>,
        /// Free text, e.g. a ticket number.
        #[arg(long)]
        note: Option<String>,
    },
    /// Unlock an identity by deleting its entry (history and earlier-lock count go with it).
    Remove {
        /// The identity to unlock.
        identity: String,
    },
    /// Unlock an identity, keeping the entry (lapsed) with who, when and why in its history.
    Unlock {
        /// The identity, @domain or network to unlock.
        identity: String,
        /// Why (kept in the lock's history).
        #[arg(long)]
        reason: String,
    },
    /// Set a lock's expiry to a duration from now, or never.
    Extend {
        /// The identity, @domain or network whose lock changes.
        identity: String,
        /// From now: e.g. 24h or 7d; or never.
        #[arg(long, value_name = "DURATION|never")]
        expires: String,
        /// Why (kept in the lock's history).
        #[arg(long)]
        reason: String,
    },
    /// Unlock every lock in force that a filter matches (all conditions must hold).
    UnlockMatching {
        /// Only locks of this source.
        #[arg(long, value_parser = ["auto", "manual"])]
        source: Option<String>,
        /// Only locks set by this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only locks set within this long (1h) or since this time (RFC 3339).
        #[arg(long, value_name = "DURATION|TIME")]
        since: Option<String>,
        /// Only identities matching this glob (* and ?), e.g. '*@example.com'.
        #[arg(long, value_name = "GLOB")]
        identity: Option<String>,
        /// With no filter: unlock every lock in force.
        #[arg(long)]
        all: bool,
        /// Why (kept in each lock's history).
        #[arg(long)]
        reason: String,
        /// List what would be unlocked, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
