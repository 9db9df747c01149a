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
}

#[derive(Subcommand)]
pub enum LocksCommand {
    /// List locked identities, newest first.
    List,
    /// Show one lock in full.
    Show {
        /// The identity, as the milter resolves it (login, address or client address).
        identity: String,
    },
    /// Lock an identity by hand.
    Add {
        /// The identity to lock (normalised as the milter does).
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
    /// Unlock an identity.
    Remove {
        /// The identity to unlock.
        identity: String,
    },
}
