// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The binary killed with SIGKILL in the middle of a lock storm: no lock
//! that has refused or held mail is forgotten.

use crate::common::*;
use indymilter_test::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Locks at the third attempt within a minute, nothing else.
const LOCK_AT_THREE: &str = r#"
[identity]
sources = ["auth", "header:X-Sender", "client-address"]
trusted_networks = ["10.0.0.0/8"]

[[rule]]
name = "lock"
rate = "2/1m"
action = "lock"
"#;

/// Where the locked reply goes out: one configuration per stage that can
/// enforce a lock.
#[derive(Clone, Copy, Debug)]
enum Enforced {
    /// No support addresses: refused at MAIL.
    Mail,
    /// Support addresses allowed: refused at the first other RCPT.
    Rcpt,
    /// The identity comes from a relay's header: refused after the headers.
    Eoh,
    /// `locked_action = "hold"`: quarantined at the end of the message.
    Hold,
}

impl Enforced {
    fn config(self) -> String {
        let locks = match self {
            Enforced::Mail => "allow_recipients = []",
            Enforced::Rcpt | Enforced::Eoh => "",
            Enforced::Hold => "locked_action = \"hold\"",
        };
        format!("{LOCK_AT_THREE}\n[locks]\n{locks}\n")
    }
}

/// splitmix64: a seeded generator, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the storm's clients saw.
#[derive(Default)]
struct Seen {
    /// Identities that got the locked reply (or had a message held).
    locked: Mutex<BTreeSet<String>>,
    /// How many locked replies arrived, and when to pull the plug.
    replies: AtomicUsize,
    kill_at: AtomicUsize,
    kill: Notify,
    /// The daemon is dead; clients stop at their next error.
    killed: AtomicBool,
}

impl Seen {
    fn got_locked(&self, identity: &str) {
        self.locked.lock().unwrap().insert(identity.to_owned());
        if self.replies.fetch_add(1, Ordering::SeqCst) + 1 == self.kill_at.load(Ordering::SeqCst) {
            self.kill.notify_one();
        }
    }
}

fn is_locked_reply(s: &Status) -> bool {
    match s {
        Status::Reject { message: Some(m) } => m.to_string_lossy().contains("is suspended"),
        _ => false,
    }
}

/// One message on an open connection; `Ok(true)` if it was refused or held
/// as locked. Any protocol error (the daemon died) is an `Err`.
async fn message(conn: &mut TestConnection, identity: &str, how: Enforced) -> TestResult<bool> {
    let header = matches!(how, Enforced::Eoh);
    let mut macros = vec![("i", "NONE")];
    if !header {
        macros.push(("{auth_authen}", identity));
    }
    conn.macros(MacroStage::Mail, macros).await?;
    let status = conn.mail(["<bounce@relay.example>"]).await?;
    if status != Status::Continue {
        conn.abort().await?;
        return Ok(is_locked_reply(&status));
    }
    conn.macros(MacroStage::Rcpt, [("i", "4ABCDEF")]).await?;
    let status = conn.rcpt(["<friend@example.net>"]).await?;
    if status != Status::Continue {
        conn.abort().await?;
        return Ok(is_locked_reply(&status));
    }
    if header {
        conn.header("X-Sender", identity).await?;
    }
    let status = conn.eoh().await?;
    if status != Status::Continue {
        conn.abort().await?;
        return Ok(is_locked_reply(&status));
    }
    conn.macros(MacroStage::Eom, [("i", "4ABCDEF")]).await?;
    let (actions, status) = conn.eom().await?;
    Ok(is_locked_reply(&status) || actions.has_quarantine(any()))
}

/// One client of the storm: identity after identity, each sending on one
/// connection until it is locked, until the daemon dies. Two clients share
/// each sequence of identities, so that one of them is often refused by a
/// lock the other's session has just set (found in force, not yet written).
async fn client(addr: SocketAddr, prefix: String, how: Enforced, seen: Arc<Seen>) {
    let client_ip = if matches!(how, Enforced::Eoh) {
        [10, 0, 0, 5]
    } else {
        [192, 0, 2, 10]
    };
    for n in 0.. {
        let identity = format!("{prefix}-{n}@example.com");
        let run = async {
            let mut conn = TestConnection::configure()
                .read_timeout(Duration::from_secs(10))
                .write_timeout(Duration::from_secs(10))
                .open_tcp(addr)
                .await?;
            conn.connect("client.example", client_ip).await?;
            for _ in 0..4 {
                if message(&mut conn, &identity, how).await? {
                    seen.got_locked(&identity);
                    break;
                }
            }
            conn.close().await
        };
        if run.await.is_err() {
            assert!(
                seen.killed.load(Ordering::SeqCst),
                "{identity}: milter connection failed before the kill"
            );
            return;
        }
    }
}

/// Kills the daemon at a random point of a storm of new locks, round after
/// round on the same lock list, and checks that every identity that was
/// ever refused (or held) as locked is in the list afterwards: a lock is on
/// disk before the first reply that enforces it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_identity_refused_as_locked_is_in_the_list_after_sigkill_in_a_lock_storm() {
    const SEED: u64 = 0x10c4_57a3;
    const CLIENTS: usize = 24;
    let mut rng = Rng(SEED);
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rounds = [
        Enforced::Mail,
        Enforced::Rcpt,
        Enforced::Eoh,
        Enforced::Hold,
        Enforced::Mail,
        Enforced::Rcpt,
        Enforced::Eoh,
        Enforced::Hold,
    ];
    let mut everyone = BTreeSet::new();
    for (round, how) in rounds.into_iter().enumerate() {
        let path = write_config(dir.path(), &how.config(), &format!("inet:{addr}"));
        // A restart after SIGKILL finds a list that parses (Process::start
        // fails if the daemon exits).
        let daemon = Process::start(&path, addr).await;
        let seen = Arc::new(Seen::default());
        let kill_at = 1 + rng.below(120) as usize;
        seen.kill_at.store(kill_at, Ordering::SeqCst);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client(addr, format!("r{round}p{}", c / 2), how, seen.clone())))
            .collect();
        let what = format!("round {round} ({how:?}, seed {SEED:#x}): kill after {kill_at} locked replies");
        tokio::time::timeout(Duration::from_secs(20), seen.kill.notified())
            .await
            .unwrap_or_else(|_| panic!("{what}: the storm never got there\n{}", daemon.log_text()));
        seen.killed.store(true, Ordering::SeqCst);
        daemon.kill().await;
        for c in clients {
            c.await.unwrap();
        }
        let on_disk: BTreeSet<String> = read_lock_list(&dir.path().join("locks.toml"))
            .entries
            .into_iter()
            .map(|e| e.identity)
            .collect();
        let locked = std::mem::take(&mut *seen.locked.lock().unwrap());
        let lost: Vec<_> = locked.difference(&on_disk).collect();
        assert!(
            lost.is_empty(),
            "{what}: {} of {} identities refused as locked are not in the lock list: {lost:?}",
            lost.len(),
            locked.len()
        );
        println!(
            "{what}: {} refused as locked, all in the list ({} entries)",
            locked.len(),
            on_disk.len()
        );
        everyone.extend(locked);
    }
    // Earlier rounds' locks were not lost by later ones either.
    let on_disk = read_lock_list(&dir.path().join("locks.toml"));
    for id in &everyone {
        assert!(on_disk.get(id).is_some(), "{id} lost by a later round");
    }
}
