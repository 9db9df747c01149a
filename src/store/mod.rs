// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Where the rate counters are kept beyond the policy's own memory. For the
//! memory backend that is [`state_file`]: the counters saved at a clean
//! stop and read back at start.

pub mod state_file;
