// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Observability: what the daemon did, counted and served.

pub mod activity;
pub mod api;
pub mod auth;
pub mod desk;
pub mod fleet_top;
pub mod metrics;
pub mod status;
