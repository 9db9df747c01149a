// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Fleet mode at the protocol level: two daemons on one real Redis share
//! their counters and locks, and go on deciding when Redis goes away.
//! (The same through real Postfix: milter-tests/live/fleet.rs.)

use crate::common::redis::RedisServer;
use crate::common::*;
use indymilter_test::*;
use std::time::{Duration, Instant};

/// A throttle of 4 messages an hour per login, shared by a fleet of two.
fn fleet_config(redis: &RedisServer, prefix: &str) -> String {
    format!(
        r#"
[[rule]]
name = "per-login"
count = "messages"
per = "identity"
rate = "4/1h"
action = "tempfail"

[store]
backend = "redis"
url = "{}"
prefix = "{prefix}"
timeout = "300ms"
retry_interval = "200ms"
fleet_size = 2
"#,
        redis.url()
    )
}

fn tempfailed(out: &Outcome) -> bool {
    matches!(out.mail, Some(Status::Tempfail { .. }))
}

#[tokio::test]
async fn two_hosts_give_a_login_one_allowance() {
    let Some(redis) = RedisServer::start() else { return };
    let config = fleet_config(&redis, "share:");
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    let blaster = Msg::from_user("blaster@example.com");
    let mut accepted = 0;
    for i in 0..12 {
        let host = if i % 2 == 0 { &a } else { &b };
        let out = Mta::send(host.addr, &blaster).await;
        if out.accepted() {
            accepted += 1;
        } else {
            assert!(tempfailed(&out), "message {i}: {out:?}");
        }
    }
    assert_eq!(accepted, 4, "the fleet lets through what one host would");
    // Another login has its own allowance, on either host.
    assert!(Mta::send(b.addr, &Msg::from_user("alice@example.com")).await.accepted());
}

#[tokio::test]
async fn without_redis_each_host_decides_at_once_on_its_share() {
    let Some(mut redis) = RedisServer::start() else { return };
    let config = fleet_config(&redis, "down:");
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    let user = Msg::from_user("carol@example.com");
    assert!(Mta::send(a.addr, &user).await.accepted());
    redis.kill9();
    // Down: every decision comes at once (the first waits for the refused
    // connection, never for the timeout), on local counters of 4 / 2.
    for host in [&a, &b] {
        let mut accepted = 0;
        for i in 0..4 {
            let started = Instant::now();
            let out = Mta::send(host.addr, &user).await;
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "message {i} took {:?}",
                started.elapsed()
            );
            accepted += usize::from(out.accepted());
        }
        assert_eq!(accepted, 2, "a host's degraded share is the rule's count / fleet_size");
    }
    // Back (empty): shared counting resumes once the retry interval is over.
    redis.start_again();
    eventually(Duration::from_secs(5), "counting on Redis again", async || {
        Mta::send(a.addr, &Msg::from_user("dave@example.com")).await.accepted()
            && redis.cli(&["--scan", "--pattern", "down:*dave*"]).contains("dave")
    })
    .await;
}
