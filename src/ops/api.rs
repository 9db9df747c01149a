// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The status API's answers on the wire, shared by the server
//! ([`super::status`]) and the CLI (`top`, `explain`, `report`, `queue`).
