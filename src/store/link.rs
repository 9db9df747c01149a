// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The connection to Redis: one multiplexed connection shared by every
//! session, found directly or through Sentinel, and a circuit breaker.
//!
//! Every call is bounded by a timeout. When one fails (refused, reset,
//! timed out), the connection is dropped and Redis is *down*: calls fail at
//! once, without waiting, until `retry_interval` has passed; then one call
//! tries to connect again (through Sentinel: asking for the master anew,
//! which is how a failover is followed). So a dead Redis costs mail nothing
//! but the first timeout, and a slow one at most `timeout` per decision.

use crate::config::StoreConfig;
use crate::policy::shared::Unavailable;
use crate::store::StoreStats;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, RedisConnectionInfo};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

enum Connector {
    Direct(Client),
    /// Sentinel's client needs `&mut` to connect.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

struct Breaker {
    conn: Option<MultiplexedConnection>,
    /// Since when Redis is unavailable (`None`: it answers).
    down_since: Option<Instant>,
    /// No call before this while down.
    next_try: Instant,
    /// A call is connecting; the others fail at once meanwhile.
    connecting: bool,
}

/// The shared connection to Redis.
pub struct RedisLink {
    connector: Connector,
    /// Describes the server for log lines (no password).
    target: String,
    breaker: Mutex<Breaker>,
    retry_interval: Duration,
    stats: Arc<StoreStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisLink {
    /// Prepares the connection (nothing is connected yet). An error names
    /// what is wrong with the configured address.
    pub fn new(config: &StoreConfig, stats: Arc<StoreStats>) -> Result<Arc<Self>, String> {
        let (connector, target) = match &config.sentinel_master {
            Some(master) => {
                let mut redis = RedisConnectionInfo::default().set_db(config.database);
                if let Some(user) = &config.username {
                    redis = redis.set_username(user);
                }
                if let Some(password) = &config.password {
                    redis = redis.set_password(password);
                }
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis)
                    .set_tcp_settings(no_delay());
                let client = SentinelClient::build(
                    config.sentinels.clone(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| format!("store.sentinels: {e}"))?;
                (
                    Connector::Sentinel(tokio::sync::Mutex::new(client)),
                    format!("master \"{master}\" of Sentinels {}", config.sentinels.join(", ")),
                )
            }
            None => {
                let info = config
                    .url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| format!("store.url: {e}"))?
                    .set_tcp_settings(no_delay());
                let client = Client::open(info).map_err(|e| format!("store.url: {e}"))?;
                (Connector::Direct(client), redacted(&config.url))
            }
        };
        Ok(Arc::new(Self {
            connector,
            target,
            breaker: Mutex::new(Breaker {
                conn: None,
                down_since: None,
                next_try: Instant::now(),
                connecting: false,
            }),
            retry_interval: config.retry_interval.0,
            stats,
        }))
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// Whether a call would be tried now (Redis up, or due for a retry).
    pub fn available(&self) -> bool {
        let b = lock(&self.breaker);
        b.down_since.is_none() || (!b.connecting && Instant::now() >= b.next_try)
    }

    /// Runs `call` on the connection, within `timeout` in all (connecting
    /// included). Fails at once while Redis is down and not due for a retry.
    pub async fn run<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (conn, connecting) = {
            let mut b = lock(&self.breaker);
            match &b.conn {
                Some(c) => (Some(c.clone()), false),
                None if b.connecting || (b.down_since.is_some() && Instant::now() < b.next_try) => {
                    return Err(Unavailable(format!("Redis at {} is unavailable", self.target)));
                }
                None => {
                    b.connecting = true;
                    (None, true)
                }
            }
        };
        let attempt = async {
            let conn = match conn {
                Some(c) => c,
                None => self.connect().await?,
            };
            let result = call(conn.clone()).await;
            Ok::<_, redis::RedisError>((conn, result))
        };
        let outcome = tokio::time::timeout(timeout, attempt).await;
        let mut b = lock(&self.breaker);
        if connecting {
            b.connecting = false;
        }
        let error = match outcome {
            Ok(Ok((conn, Ok(value)))) => {
                if connecting {
                    b.conn = Some(conn);
                }
                if let Some(since) = b.down_since.take() {
                    self.stats.degraded.store(false, Ordering::Relaxed);
                    info!(
                        redis = %self.target,
                        down_s = since.elapsed().as_secs(),
                        "Redis is available again: counters are shared with the fleet again"
                    );
                }
                return Ok(value);
            }
            // A script error or a wrong reply: the connection is fine.
            Ok(Ok((_, Err(e)))) if !is_connection_error(&e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(Unavailable(format!("Redis at {}: {e}", self.target)));
            }
            Ok(Ok((_, Err(e)))) | Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}ms", timeout.as_millis()),
        };
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        b.conn = None;
        b.next_try = Instant::now() + self.retry_interval;
        if b.down_since.is_none() {
            b.down_since = Some(Instant::now());
            self.stats.degraded.store(true, Ordering::Relaxed);
            warn!(
                redis = %self.target,
                error = %error,
                retry_in_ms = self.retry_interval.as_millis() as u64,
                "Redis is unavailable: each host uses local counters at the degraded limits (a rule's count / store.fleet_size) and enforces the locks it knows"
            );
        }
        Err(Unavailable(format!("Redis at {}: {error}", self.target)))
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        match &self.connector {
            Connector::Direct(client) => client.get_multiplexed_async_connection().await,
            Connector::Sentinel(client) => client.lock().await.get_async_connection().await,
        }
    }
}

/// TCP without Nagle: each decision is one small request that must not wait
/// for the ACK of the previous one (with Nagle on, a decision that follows
/// another on the shared connection can wait for the peer's delayed ACK,
/// up to 40 ms).
fn no_delay() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// Whether an error means the connection is unusable (rather than a
/// command that failed on a working connection).
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// A Redis URL without its password, for log lines.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_log_lines() {
        assert_eq!(redacted("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(
            redacted("redis://egress:s3cret@10.0.0.5:6379/2"),
            "redis://egress:***@10.0.0.5:6379/2"
        );
    }
}
