// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Local Unix users by uid: their names through the system's name service
//! (NSS: /etc/passwd, LDAP, SSSD, ... as /etc/nsswitch.conf says), for the
//! identity of a local submission (`local:www-data`). Answers are cached,
//! and a lookup is never waited for longer than [`LOOKUP_TIMEOUT`]: a name
//! service that hangs must not hang the MTA.

use nix::unistd::{Uid, User};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest a message waits for a name. NSS from files answers in
/// microseconds, a directory service in milliseconds; past this the
/// message is identified without the name (see [`UserNames::name_of`]).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an answer (a name, or "no such user") is used without asking
/// again: a renamed or new user is seen within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(600);

/// Most uids cached. A host has few users that send mail; the bound is for
/// a directory with very many, each sending once.
pub const MAX_CACHED: usize = 10_000;

/// Looks one uid up: `Ok(None)` when there is no such user.
pub type Lookup = Arc<dyn Fn(u32) -> Result<Option<String>, String> + Send + Sync>;

/// Names of local users, cached.
pub struct UserNames {
    lookup: Lookup,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<u32, Cached>>,
}

struct Cached {
    name: Option<String>,
    at: Instant,
}

impl UserNames {
    /// The names of this host's users, through NSS (`getpwuid_r`), shared by
    /// every connection.
    pub fn system() -> &'static UserNames {
        static SYSTEM: OnceLock<UserNames> = OnceLock::new();
        SYSTEM.get_or_init(|| UserNames::new(Arc::new(nss_lookup), LOOKUP_TIMEOUT, CACHE_TTL))
    }

    /// Names from `lookup` (the seam for tests).
    pub fn new(lookup: Lookup, timeout: Duration, ttl: Duration) -> UserNames {
        UserNames {
            lookup,
            timeout,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The name of `uid`, `Ok(None)` if it has none. A cached answer younger
    /// than the TTL is used as it is; otherwise the name service is asked,
    /// on a blocking thread, for [`LOOKUP_TIMEOUT`] at most. When it fails
    /// or is too slow, an older answer is still used (a user keeps its name,
    /// its counters and its lock through a directory outage); with none,
    /// the error is returned and the caller identifies the message without
    /// the name.
    pub async fn name_of(&self, uid: u32) -> Result<Option<String>, String> {
        let stale = {
            let cache = lock(&self.cache);
            match cache.get(&uid) {
                Some(c) if c.at.elapsed() < self.ttl => return Ok(c.name.clone()),
                Some(c) => Some(c.name.clone()),
                None => None,
            }
        };
        let lookup = self.lookup.clone();
        let asked = tokio::time::timeout(self.timeout, tokio::task::spawn_blocking(move || lookup(uid))).await;
        let answer = match asked {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err(format!("the lookup of uid {uid} failed: {e}")),
            Err(_) => Err(format!(
                "the name service did not answer for uid {uid} within {} ms",
                self.timeout.as_millis()
            )),
        };
        match answer {
            Ok(name) => {
                let mut cache = lock(&self.cache);
                if cache.len() >= MAX_CACHED && !cache.contains_key(&uid) {
                    let ttl = self.ttl;
                    cache.retain(|_, c| c.at.elapsed() < ttl);
                    if cache.len() >= MAX_CACHED {
                        cache.clear();
                    }
                }
                cache.insert(
                    uid,
                    Cached {
                        name: name.clone(),
                        at: Instant::now(),
                    },
                );
                Ok(name)
            }
            Err(e) => stale.ok_or(e),
        }
    }
}

/// `getpwuid_r` through nix: whatever NSS the host is configured with.
fn nss_lookup(uid: u32) -> Result<Option<String>, String> {
    User::from_uid(Uid::from_raw(uid))
        .map(|user| user.map(|u| u.name))
        .map_err(|e| format!("getpwuid_r({uid}): {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(answer: Result<Option<String>, String>) -> (Lookup, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookup: Lookup = Arc::new(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            answer.clone()
        });
        (lookup, calls)
    }

    #[tokio::test]
    async fn the_system_knows_root_and_not_a_uid_nobody_has() {
        let names = UserNames::system();
        assert_eq!(names.name_of(0).await, Ok(Some("root".into())));
        assert_eq!(names.name_of(4_000_000_000).await, Ok(None));
    }

    #[tokio::test]
    async fn answers_are_cached_until_the_ttl() {
        let (lookup, calls) = counting(Ok(Some("www-data".into())));
        let names = UserNames::new(lookup, LOOKUP_TIMEOUT, Duration::from_millis(50));
        for _ in 0..3 {
            assert_eq!(names.name_of(33).await, Ok(Some("www-data".into())));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        names.name_of(33).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hanging_name_service_is_not_waited_for() {
        let lookup: Lookup = Arc::new(|_| {
            std::thread::sleep(Duration::from_millis(500));
            Ok(Some("late".into()))
        });
        let names = UserNames::new(lookup, Duration::from_millis(20), CACHE_TTL);
        let started = Instant::now();
        let answer = names.name_of(1000).await;
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert!(answer.unwrap_err().contains("did not answer"));
    }

    #[tokio::test]
    async fn a_failing_name_service_keeps_the_last_answer() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = fail.clone();
        let lookup: Lookup = Arc::new(move |_| {
            if failing.load(Ordering::SeqCst) {
                Err("LDAP server down".into())
            } else {
                Ok(Some("alice".into()))
            }
        });
        let names = UserNames::new(lookup, LOOKUP_TIMEOUT, Duration::ZERO);
        assert_eq!(names.name_of(1001).await, Ok(Some("alice".into())));
        fail.store(true, Ordering::SeqCst);
        assert_eq!(names.name_of(1001).await, Ok(Some("alice".into())), "stale but known");
        assert_eq!(names.name_of(1002).await, Err("LDAP server down".into()));
    }
}
