// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Loopback ports for test servers, shared by both test binaries
//! (`milter-tests` includes it from `common`, `live` by path).

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// A loopback port nobody listens on, never the same twice in this test
/// binary: the kernel may hand a port that was just probed and released to
/// the next probe, and two tests starting servers on one port would then
/// talk to each other's (one of them failing to bind, unnoticed).
pub fn free_port() -> io::Result<u16> {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        if claim_port(port) {
            return Ok(port);
        }
    }
}

/// Records `port` as taken by this test binary; false if it already was
/// (a listener that holds a kernel-chosen port, like a sink, must not get
/// one that [`free_port`] handed out to a server not yet started).
pub fn claim_port(port: u16) -> bool {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    if handed_out.contains(&port) {
        return false;
    }
    handed_out.push(port);
    true
}
