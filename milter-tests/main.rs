// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Protocol-level tests: the daemon driven the way Postfix drives it.

mod common;

mod closed_stdout;
mod crash;
mod daemon;
mod desk;
mod examples;
mod fleet;
mod identity;
mod layers;
mod limits;
mod local_door;
mod lock_list;
mod locking;
mod notify;
mod scanner;
mod shared_counters;
mod signals;
mod status;
mod watchdog;
