// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The milter adapter: the milter protocol in, verdicts out. The only part
//! of egress-milter that knows indymilter.

pub mod callbacks;
pub mod listener;
pub mod session;
