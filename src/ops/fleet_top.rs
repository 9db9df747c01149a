// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `top` for a fleet: every host publishes its busiest identities to Redis
//! every [`PUBLISH_INTERVAL`], and `/api/identities` on any host merges the
//! other hosts' lists with its own live one. (`explain` needs nothing of
//! this: it reads the shared counters themselves.)
//!
//! One hash, `<prefix>{top}`, one field per host: `"<unix seconds> <JSON>"`.
//! A host that stops publishing drops out of the merge after [`STALE`].

use crate::ops::activity::{Activity, SortBy};
use crate::ops::metrics::Observer;
use crate::store::link::RedisLink;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::debug;

/// How often a host publishes its list.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);
/// A list older than this is left out of the merge.
const STALE: Duration = Duration::from_secs(30);
/// Rows published per sort order (the API's largest `top` is 1000).
const PUBLISHED: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(2);

pub struct FleetTop {
    link: Arc<RedisLink>,
    key: String,
    host: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FleetTop {
    /// `instance` tells two daemons on one host apart (their milter socket).
    pub fn new(link: Arc<RedisLink>, prefix: &str, instance: &str) -> Self {
        let node = rustix::system::uname().nodename().to_string_lossy().into_owned();
        Self {
            link,
            key: format!("{prefix}{{top}}"),
            host: format!("{node} {instance}"),
        }
    }

    /// Publishes this host's busiest identities (by messages and by
    /// recipients) until `shutdown`.
    pub async fn run_publisher(
        self: Arc<Self>,
        observer: Arc<Observer>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            let activity = observer.activity();
            let mut rows: HashMap<String, Activity> = HashMap::new();
            for sort in [SortBy::Messages, SortBy::Recipients] {
                for a in activity.top(PUBLISHED, sort) {
                    rows.insert(a.identity.clone(), a);
                }
            }
            let rows: Vec<Activity> = rows.into_values().collect();
            let Ok(json) = serde_json::to_string(&rows) else {
                continue;
            };
            let value = format!("{} {json}", unix_now());
            let (key, host) = (self.key.clone(), self.host.clone());
            let result = self
                .link
                .run(TIMEOUT, |mut conn| async move {
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg(&host)
                        .arg(&value)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
            if let Err(e) = result {
                debug!("top not published to the fleet: {e}");
            }
        }
    }

    /// The other hosts' lists, fresh ones only; `None` if Redis does not
    /// answer (then `top` shows this host alone, and says so).
    pub async fn others(&self) -> Option<Vec<Vec<Activity>>> {
        let key = self.key.clone();
        let all: HashMap<String, String> = self
            .link
            .run(TIMEOUT, |mut conn| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await
            })
            .await
            .ok()?;
        let now = unix_now();
        Some(
            all.into_iter()
                .filter(|(host, _)| *host != self.host)
                .filter_map(|(_, v)| {
                    let (at, json) = v.split_once(' ')?;
                    let at: u64 = at.parse().ok()?;
                    (now.saturating_sub(at) <= STALE.as_secs()).then(|| serde_json::from_str(json).ok())?
                })
                .collect(),
        )
    }
}
