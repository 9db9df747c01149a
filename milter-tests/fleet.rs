// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Fleet mode at the protocol level: two daemons on one real Redis share
//! their counters and locks, and go on deciding when Redis goes away.
//! (The same through real Postfix: milter-tests/live/fleet.rs.)

use crate::common::redis::{RedisServer, Sentinel};
use crate::common::*;
use std::time::{Duration, Instant};

/// How long a lock change may take to reach the other host here. The
/// promise is a second, and the live suite holds it to that through real
/// Postfix (milter-tests/live/fleet.rs); this suite runs many daemons at
/// once on two shared cores, so it allows more and prints what it saw
/// (typically 0.1 to 0.3 s).
const PROPAGATION: Duration = Duration::from_secs(3);

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
    out.tempfailed()
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

/// A lock rule (3 attempts an hour) beside the fleet's throttle.
fn lock_config(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "{}\n{}",
        r#"
[[rule]]
name = "lock-at-3"
count = "messages"
per = "identity"
rate = "3/1h"
action = "lock"
"#,
        fleet_config(redis, prefix)
    )
}

fn refused_as_locked(out: &Outcome) -> bool {
    out.refusal()
        .is_some_and(|r| r.starts_with("550") && r.contains("is suspended"))
}

/// Trips the lock rule of `login` through `host`: sends until the 550.
async fn trip_lock(host: &Milter, login: &str) {
    let msg = Msg::from_user(login);
    for _ in 0..10 {
        let out = Mta::send(host.addr, &msg).await;
        if out.refusal().is_some_and(|r| r.starts_with("550")) {
            return;
        }
    }
    panic!("{login} was not locked after 10 attempts");
}

/// Waits until the lock list file of `host` lists `login`.
async fn until_listed(host: &Milter, login: &str, limit: Duration) {
    eventually(limit, &format!("{login} in the lock list file"), async || {
        host.lock_list().entries.iter().any(|e| e.identity == login)
    })
    .await;
}

/// Waits until `host` refuses `login` as locked; how long that took.
async fn until_refused(host: &Milter, login: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let msg = Msg::from_user(login);
    eventually(limit, &format!("{login} refused as locked"), async || {
        refused_as_locked(&Mta::send(host.addr, &msg).await)
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn a_lock_set_on_one_host_holds_on_the_other_within_a_second_and_an_unlock_anywhere_lifts_it() {
    let Some(redis) = RedisServer::start() else { return };
    let config = lock_config(&redis, "locks:");
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    trip_lock(&a, "mallory@example.com").await;
    // Nothing is sent to B before its file shows the lock: B's own attempts
    // would count on the shared lock rule and lock the login there too.
    let started = Instant::now();
    let on_a = a.lock_list().entries;
    eventually(PROPAGATION, "B's lock list file shows A's lock", async || {
        b.lock_list().entries == on_a
    })
    .await;
    let took = started.elapsed();
    assert_eq!(on_a.len(), 1);
    assert!(on_a[0].reason.contains("lock-at-3"), "{:?}", on_a[0]);
    until_refused(&b, "mallory@example.com", Duration::from_millis(100)).await;
    eprintln!("lock on A in B's file and enforced after {took:?}");
    // A lock added with the CLI on B holds on A.
    let config_a = egress_milter::config::Config::read(&a.config_path).unwrap();
    let config_b = egress_milter::config::Config::read(&b.config_path).unwrap();
    egress_milter::admin::add(&config_b, "trudy@example.net", "phishing seen", None, None).unwrap();
    let started = Instant::now();
    until_listed(&a, "trudy@example.net", PROPAGATION).await;
    eprintln!("lock added with the CLI on B in A's file after {:?}", started.elapsed());
    until_refused(&a, "trudy@example.net", Duration::from_millis(100)).await;
    assert!(
        egress_milter::admin::show(&config_a, "trudy@example.net")
            .unwrap()
            .contains("phishing seen")
    );
    // `locks remove` on B: A lets the login through again within a second.
    egress_milter::admin::remove(&config_b, "mallory@example.com").unwrap();
    let started = Instant::now();
    eventually(PROPAGATION, "A accepts mallory again", async || {
        Mta::send(a.addr, &Msg::from_user("mallory@example.com"))
            .await
            .accepted()
    })
    .await;
    eprintln!("unlock on B lifted at A after {:?}", started.elapsed());
    assert!(
        a.lock_list()
            .entries
            .iter()
            .all(|e| e.identity != "mallory@example.com"),
        "A's file no longer lists the lock"
    );
}

#[tokio::test]
async fn locks_made_while_redis_is_down_reach_the_fleet_and_an_empty_redis_is_refilled() {
    let Some(mut redis) = RedisServer::start() else { return };
    let config = lock_config(&redis, "outage:");
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    trip_lock(&a, "early@example.com").await;
    until_listed(&b, "early@example.com", PROPAGATION).await;
    redis.kill9();
    // Down: A locks another login on its own (at the degraded limit); both
    // keep enforcing what they know.
    trip_lock(&a, "during@example.com").await;
    assert!(refused_as_locked(
        &Mta::send(b.addr, &Msg::from_user("early@example.com")).await
    ));
    assert!(refused_as_locked(
        &Mta::send(a.addr, &Msg::from_user("during@example.com")).await
    ));
    assert!(b.lock_list().entries.iter().all(|e| e.identity != "during@example.com"));
    // Back, empty: the hosts give it their locks, and B learns A's.
    redis.start_again();
    until_listed(&b, "during@example.com", Duration::from_secs(5)).await;
    assert!(refused_as_locked(
        &Mta::send(b.addr, &Msg::from_user("during@example.com")).await
    ));
    let fleet = redis.cli(&["HKEYS", "outage:{locks}:entries"]);
    assert!(
        fleet.contains("early@example.com") && fleet.contains("during@example.com"),
        "both locks on Redis again: {fleet}"
    );
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_and_the_counts_survive_it() {
    let Some(mut master) = RedisServer::start() else { return };
    let replica = RedisServer::replica_of(&master);
    let sentinel = Sentinel::start(&master);
    let config = format!(
        r#"
[[rule]]
name = "per-login"
count = "messages"
per = "identity"
rate = "4/1h"
action = "tempfail"

[store]
backend = "redis"
sentinel_master = "{}"
sentinels = ["{}"]
prefix = "sentinel:"
timeout = "300ms"
retry_interval = "200ms"
fleet_size = 2
"#,
        Sentinel::MASTER,
        sentinel.url()
    );
    let host = Milter::spawn(&config).await;
    let user = Msg::from_user("erin@example.com");
    for _ in 0..2 {
        assert!(Mta::send(host.addr, &user).await.accepted());
    }
    // On the replica before the master goes.
    assert_eq!(
        master.cli(&["WAIT", "1", "2000"]).trim(),
        "1",
        "the replica has the counts"
    );
    master.kill9();
    eventually(Duration::from_secs(15), "Sentinel promotes the replica", async || {
        sentinel.master_port() == Some(replica.port)
    })
    .await;
    // The milter asks Sentinel again and counts on the new master: erin has
    // 2 of 4 left there (the degraded share meanwhile would be 4 / 2 = 2
    // fresh ones; a fresh login shows where counting happens).
    eventually(
        Duration::from_secs(10),
        "counting on the promoted replica",
        async || {
            Mta::send(host.addr, &Msg::from_user("frank@example.com"))
                .await
                .accepted()
                && replica
                    .cli(&["--scan", "--pattern", "sentinel:*frank*"])
                    .contains("frank")
        },
    )
    .await;
    let accepted = {
        let mut n = 0;
        for _ in 0..4 {
            n += usize::from(Mta::send(host.addr, &user).await.accepted());
        }
        n
    };
    assert_eq!(
        accepted,
        2,
        "the counts made before the failover still hold after it\n{}",
        sentinel.log()
    );
}

/// The Redis settings docs/fleet.md ships (conf/redis/egress-milter.conf):
/// its ACL user can do everything the milter does, and nothing else.
#[tokio::test]
async fn the_shipped_redis_acl_lets_the_milter_do_its_work() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/redis/egress-milter.conf");
    let Some(redis) = RedisServer::start_with_config(&conf) else {
        return;
    };
    let url = format!("redis://egress-milter:change-this-password@127.0.0.1:{}/0", redis.port);
    let config = lock_config(&redis, "egress-milter:").replace(&redis.url(), &url);
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    trip_lock(&a, "acl@example.com").await;
    until_listed(&b, "acl@example.com", Duration::from_secs(2)).await;
    let keys = redis.cli(&["--scan", "--pattern", "egress-milter:*"]);
    assert!(
        keys.contains("{example.com}:i:acl@example.com") && keys.contains("{locks}:entries"),
        "{keys}"
    );
    // Outside its prefix the user is refused.
    let other = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--user",
            "egress-milter",
            "--pass",
            "change-this-password",
        ])
        .args(["SET", "other:key", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&other.stdout).contains("NOPERM"), "{other:?}");
}

/// The merge rule of docs/fleet.md, on the script itself: the later lock
/// wins, an edit of the same lock replaces it, an unlock removes only the
/// lock it saw.
#[tokio::test]
async fn the_merge_rule_keeps_the_later_lock_and_unlocks_only_what_was_seen() {
    let Some(redis) = RedisServer::start() else { return };
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = ::redis::Script::new(include_str!("../src/store/locks.lua"));
    let keys = ["m:{locks}:entries", "m:{locks}:log", "m:{locks}:version"];
    let mut change = async |op: &str, at: u64, value: &str| -> Option<String> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg("host-a").arg(op).arg("x@example.com").arg(at).arg(value);
        let out: Vec<Option<String>> = inv.invoke_async(&mut conn).await.unwrap();
        out.into_iter().next().flatten()
    };
    assert_eq!(change("put", 200, "200 B").await.as_deref(), Some("200 B"));
    assert_eq!(
        change("put", 100, "100 A").await.as_deref(),
        Some("200 B"),
        "an older lock does not replace a newer one"
    );
    assert_eq!(
        change("put", 200, "200 B edited").await.as_deref(),
        Some("200 B edited"),
        "an edit of the same lock replaces it"
    );
    assert_eq!(
        change("unlock", 100, "").await.as_deref(),
        Some("200 B edited"),
        "an unlock of an older lock leaves the newer one"
    );
    assert_eq!(
        change("unlock", 200, "").await,
        None,
        "an unlock of the lock it saw removes it"
    );
    assert_eq!(change("unlock", 200, "").await, None, "unlocking nothing is harmless");
    // Three changes (put, edit, unlock); the refused ones change nothing. Each is logged once.
    assert_eq!(redis.cli(&["GET", "m:{locks}:version"]).trim(), "3");
    assert_eq!(redis.cli(&["XLEN", "m:{locks}:log"]).trim(), "3");
}

/// A host whose lock list does not parse (an edit gone wrong) cannot take
/// the fleet's locks into its file; when the admin fixes the file, the
/// fleet's locks are written into it, and the fix is not taken for an
/// unlock of them anywhere.
#[tokio::test]
async fn a_corrupt_lock_list_on_one_host_loses_no_fleet_lock() {
    let Some(redis) = RedisServer::start() else { return };
    let config = lock_config(&redis, "corrupt:");
    let (a, b) = (Milter::spawn(&config).await, Milter::spawn(&config).await);
    let good = std::fs::read_to_string(&b.lock_path).unwrap_or_default();
    std::fs::write(&b.lock_path, "[[lock]]\nidentity = \"broken\n").unwrap();
    trip_lock(&a, "spammer@example.com").await;
    // B cannot write it, and keeps retrying; A has it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a.lock_list()
            .entries
            .iter()
            .any(|e| e.identity == "spammer@example.com")
    );
    // The admin puts the last good file back.
    std::fs::write(&b.lock_path, good).unwrap();
    until_listed(&b, "spammer@example.com", PROPAGATION).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a.lock_list()
            .entries
            .iter()
            .any(|e| e.identity == "spammer@example.com"),
        "the fix on B unlocked nothing on A"
    );
    assert!(
        redis
            .cli(&["HKEYS", "corrupt:{locks}:entries"])
            .contains("spammer@example.com")
    );
    assert!(refused_as_locked(
        &Mta::send(b.addr, &Msg::from_user("spammer@example.com")).await
    ));
}

/// Issue 18: an entry that this host's lock list would refuse (an older
/// host pushed a hand edit with markup for an identity) is not written
/// into its file, which would stop parsing; the good entries after it are.
#[tokio::test]
async fn a_fleet_entry_the_lock_list_would_refuse_stays_out_of_the_file() {
    use egress_milter::locks::file::{LockEntry, LockSource, Timestamp};
    let Some(redis) = RedisServer::start() else { return };
    let config = lock_config(&redis, "guard:");
    let host = Milter::spawn(&config).await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = ::redis::Script::new(include_str!("../src/store/locks.lua"));
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    for identity in ["<script>alert(1)</script>", "eve@example.com"] {
        let entry = LockEntry {
            identity: identity.into(),
            source: LockSource::Manual,
            locked_at: Timestamp(at),
            reason: "pushed by an older host".into(),
            rule: None,
            previous_locks: 0,
            expires_at: None,
            note: None,
            history: Vec::new(),
        };
        let value = format!("1795000000000 {}", serde_json::to_string(&entry).unwrap());
        let mut inv = script.prepare_invoke();
        for k in ["guard:{locks}:entries", "guard:{locks}:log", "guard:{locks}:version"] {
            inv.key(k);
        }
        inv.arg("older-host")
            .arg("put")
            .arg(identity)
            .arg(1_795_000_000_000u64)
            .arg(value);
        let _: Vec<Option<String>> = inv.invoke_async(&mut conn).await.unwrap();
    }
    until_listed(&host, "eve@example.com", PROPAGATION).await;
    let config = egress_milter::config::Config::read(&host.config_path).unwrap();
    let list =
        egress_milter::locks::file::LockList::read(&host.lock_path, &*egress_milter::locks::lock_normaliser(&config))
            .unwrap_or_else(|e| panic!("the fleet made the lock list invalid: {e}"));
    assert_eq!(
        list.entries.iter().map(|e| e.identity.as_str()).collect::<Vec<_>>(),
        ["eve@example.com"]
    );
    assert!(refused_as_locked(
        &Mta::send(host.addr, &Msg::from_user("eve@example.com")).await
    ));
}
