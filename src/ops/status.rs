// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The optional HTTP status listener (`[status] listen`): Prometheus
//! metrics, a health check and a small JSON API for `top`, `explain`,
//! `report` and `queue hold`.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | the metrics, OpenMetrics text format |
//! | `GET /healthz` | `200 ok`, `200 degraded: …` (Redis, the scanner), or `503` and the reason |
//! | `GET /api/identities?top=N&sort=messages\|recipients` | the busiest identities now |
//! | `GET /api/identities/ID` | every rule's count for ID, its lock and activity |
//! | `GET /api/report?since=24h` | per-identity totals over the last hours |
//! | `GET /`, `/api/locks`, `POST /api/actions/*` | the review desk ([`super::desk`]) |
//!
//! Everything but `/metrics`, `/healthz` and the desk's static files needs
//! authentication ([`super::auth`]); every state-changing request also a
//! CSRF token and the desk's origin.
//!
//! It is bounded: headers of at most 8 KiB read within 5 s, request bodies
//! of at most 16 KiB, each connection closed after 30 s, at most
//! `status.max_connections` at once (more are closed at once).

use crate::clock::Clock;
use crate::config::{IdentitySource, format_duration};
use crate::locks::{FileLocks, LockStore};
use crate::notify;
use crate::ops::activity::{HISTORY_HOURS, SortBy, merge_top};
use crate::ops::api::{ExplainAnswer, LockView, ReportAnswer, RuleView, TopAnswer, percent_decode};
use crate::ops::auth::{Auth, Principal};
use crate::ops::fleet_top::FleetTop;
use crate::ops::metrics::{Gauges, Observer, StoreGauges};
use crate::policy::identity::Identity;
use crate::policy::{CurrentPolicy, snapshot};
use crate::store::StoreStats;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head read (hyper's minimum buffer).
const MAX_REQUEST: usize = 8192;
/// Largest `top`.
const MAX_TOP: usize = 1000;

/// What the listener serves from.
#[derive(Clone)]
pub struct State {
    current: CurrentPolicy,
    locks: Arc<FileLocks>,
    observer: Arc<Observer>,
    /// What became of lock notifications, for `/metrics`.
    notifications: Arc<notify::Stats>,
    clock: Clock,
    max_connections: usize,
    /// The fleet store's figures (`backend = "redis"`).
    store: Option<Arc<StoreStats>>,
    /// The other hosts' `top` lists, in a fleet.
    fleet_top: Option<Arc<FleetTop>>,
    /// Who may read and write.
    pub(crate) auth: Arc<Auth>,
    /// Gives identities a fresh start (their counters emptied, here and in
    /// the fleet): after an unlock or a reset.
    pub(crate) forget: Forget,
}

/// Empties the counters of the identities given.
pub type Forget = Arc<dyn Fn(&[String]) + Send + Sync>;

impl State {
    pub fn new(
        current: CurrentPolicy,
        locks: Arc<FileLocks>,
        observer: Arc<Observer>,
        notifications: Arc<notify::Stats>,
        clock: Clock,
        store: Option<Arc<StoreStats>>,
    ) -> Self {
        let max_connections = snapshot(&current).config().status.max_connections;
        Self {
            current,
            locks,
            observer,
            notifications,
            clock,
            max_connections,
            store,
            fleet_top: None,
            // No token anyone knows until `with_auth`: nothing gets in.
            auth: Arc::new(Auth::with_token(String::new())),
            forget: Arc::new(|_: &[String]| {}),
        }
    }

    /// Authentication, with the local token written at start.
    pub fn with_auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// What to call to forget identities' counters.
    pub fn with_forget(mut self, forget: Forget) -> Self {
        self.forget = forget;
        self
    }

    pub(crate) fn locks(&self) -> &Arc<FileLocks> {
        &self.locks
    }

    pub(crate) fn policy(&self) -> Arc<crate::policy::Policy> {
        snapshot(&self.current)
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// In a fleet: `top` merges the other hosts' lists.
    pub fn with_fleet_top(mut self, fleet_top: Arc<FleetTop>) -> Self {
        self.fleet_top = Some(fleet_top);
        self
    }
}

/// Binds the status listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the status listener (status.listen): {e}"),
        )
    })
}

/// Serves until `stop` resolves.
pub async fn serve(listener: TcpListener, state: State, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let permits = Arc::new(Semaphore::new(state.max_connections));
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "status listener started");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("status listener: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "status listener: connection limit reached (status.max_connections), closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(secure(answer(&state, req, peer).await)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "status listener: connection error: {e}"),
                Err(_) => debug!(%peer, "status listener: connection closed after {CONNECTION_TIMEOUT:?}"),
            }
            drop(permit);
        });
    }
}

pub(crate) type Answer = Response<Full<Bytes>>;

/// Headers on every answer: no framing (clickjacking of the desk's
/// buttons), no sniffing, scripts and styles from the daemon only.
fn secure(mut r: Answer) -> Answer {
    let h = r.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    if !h.contains_key("cache-control") {
        h.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    r
}

pub(crate) fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    body.push('\n');
    reply(status, "text/plain; charset=utf-8", body)
}

pub(crate) fn json(value: &impl Serialize) -> Answer {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode JSON: {e}")),
    }
}

async fn answer(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    // Open to anyone who reaches the listener: aggregates and static files.
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => return metrics(state),
        (&Method::GET, "/healthz") => return health(state),
        (&Method::GET, "/review.js" | "/review.css") => return super::desk::asset(&path),
        (&Method::POST, "/login") => return super::desk::login(state, req).await,
        (&Method::POST, "/logout") => return super::desk::logout(state, &req),
        _ => {}
    }
    let config = snapshot(&state.current).config().status.clone();
    let principal = match state.auth.authenticate(&config, req.headers(), peer.ip()).await {
        Ok(p) => p,
        Err(why) if path == "/" && method == Method::GET => return super::desk::login_page(why.as_deref()),
        Err(why) => {
            if let Some(why) = &why {
                warn!(%peer, path = %path, "status listener: request refused: {why}");
            }
            return unauthorized(why.as_deref());
        }
    };
    if method == Method::POST {
        return match path.strip_prefix("/api/actions/") {
            Some(action) => super::desk::action(state, &principal, action, req, peer).await,
            None => text(StatusCode::NOT_FOUND, "not found"),
        };
    }
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST are served");
    }
    authenticated_get(state, &principal, &path, &query).await
}

/// 401 with a challenge for basic auth: what the CLI and curl see.
fn unauthorized(why: Option<&str>) -> Answer {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        format!(
            "authentication required: {}; log in on the review desk (/), send HTTP basic auth of a user of status.users_file, or run the CLI as root or the daemon's user (it sends the local token)",
            why.unwrap_or("no credentials")
        ),
    );
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"egress-milter\", charset=\"UTF-8\""),
    );
    r
}

async fn authenticated_get(state: &State, principal: &Principal, path: &str, query: &str) -> Answer {
    match path {
        "/" => super::desk::page(),
        "/api/session" => super::desk::session(principal),
        "/api/locks" => super::desk::locks(state, query),
        "/api/identities" => top(state, query).await,
        "/api/report" => report(state, query),
        _ => {
            if let Some(id) = path.strip_prefix("/api/locks/") {
                return match percent_decode(id) {
                    Some(id) => super::desk::one_lock(state, &id),
                    None => text(
                        StatusCode::BAD_REQUEST,
                        "the identity is not valid percent-encoded UTF-8",
                    ),
                };
            }
            match path.strip_prefix("/api/identities/") {
                Some(id) if !id.is_empty() => match percent_decode(id) {
                    Some(id) => explain(state, &id).await,
                    None => text(
                        StatusCode::BAD_REQUEST,
                        "the identity is not valid percent-encoded UTF-8",
                    ),
                },
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found; try /, /metrics, /healthz, /api/locks, /api/identities, /api/identities/ID, /api/report",
                ),
            }
        }
    }
}

fn now(state: &State) -> SystemTime {
    state.clock.wall_now()
}

fn metrics(state: &State) -> Answer {
    let now = now(state);
    let stats = state.locks.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let gauges = Gauges {
        locks_active: state.locks.entries().iter().filter(|e| e.is_active(now)).count() as u64,
        locks_pending_write: state.locks.pending_writes() as u64,
        locks_added_auto: load(&stats.added_auto),
        locks_added_manual: load(&stats.added_manual),
        lock_write_errors: load(&stats.write_errors),
        lock_list_corrupt: stats.corrupt.load(Ordering::Relaxed),
        notifications: state.notifications.outcomes(),
        store: state.store.as_ref().map(|st| StoreGauges {
            degraded: st.is_degraded(),
            decisions: load(&st.decisions),
            degraded_decisions: load(&st.degraded_decisions),
            errors: load(&st.errors),
            locks_pushed: load(&st.locks_pushed),
            locks_pulled: load(&st.locks_pulled),
        }),
        scanner: state.policy().config().scanner.is_enabled(),
    };
    match crate::ops::metrics::encode(&state.observer, gauges) {
        Ok(body) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")),
    }
}

/// Why the daemon is unhealthy, if it is.
pub fn health_problem(locks: &FileLocks) -> Option<String> {
    let stats = locks.stats();
    if stats.corrupt.load(Ordering::Relaxed) {
        return Some(format!(
            "lock list {} does not parse: the last good list is in force and new locks cannot be written; fix the file",
            locks.path().display()
        ));
    }
    if stats.write_failing.load(Ordering::Relaxed) && locks.pending_writes() > 0 {
        return Some(format!(
            "lock list {} cannot be written: {} lock(s) pending, enforced in memory only",
            locks.path().display(),
            locks.pending_writes()
        ));
    }
    None
}

/// 200 `ok`, or 200 `degraded: ...` while Redis is unavailable (mail
/// flows, decided on local counters) or the content scanner fails (mail
/// flows, unscanned), one line each, or 503 with what is wrong.
///
/// A failing content scanner is degraded too: mail flows, unscanned.
fn health(state: &State) -> Answer {
    if let Some(why) = health_problem(&state.locks) {
        return text(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let mut degraded = Vec::new();
    if state.store.as_ref().is_some_and(|st| st.is_degraded()) {
        degraded.push(
            "degraded: Redis is unavailable; deciding on local counters at the degraded limits (a rule's count / store.fleet_size), enforcing the locks known here".to_string(),
        );
    }
    let policy = state.policy();
    if let Some(url) = &policy.config().scanner.url
        && let Some(why) = state.observer.scanner().degraded()
    {
        degraded.push(format!(
            "degraded: the content scanner {url} failed ({why}); messages pass unscanned and the spam, phishing and virus rules count nothing until it answers again"
        ));
    }
    if degraded.is_empty() {
        text(StatusCode::OK, "ok")
    } else {
        text(StatusCode::OK, degraded.join("\n"))
    }
}

pub(crate) fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn is_locked(state: &State, identity: &str, now: SystemTime) -> bool {
    state.locks.lookup(identity, now).is_some()
}

async fn top(state: &State, query: &str) -> Answer {
    let n = match param(query, "top").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=MAX_TOP).contains(&n) => n,
        Some(_) => return text(StatusCode::BAD_REQUEST, format!("top must be 1 to {MAX_TOP}")),
    };
    let (sort, name) = match param(query, "sort") {
        None | Some("messages") => (SortBy::Messages, "messages"),
        Some("recipients") => (SortBy::Recipients, "recipients"),
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("sort must be messages or recipients, not \"{other}\""),
            );
        }
    };
    let now = now(state);
    let activity = state.observer.activity();
    let mut identities = activity.top(n, sort);
    let mut hosts = 1;
    if let Some(fleet) = &state.fleet_top
        && let Some(others) = fleet.others().await
    {
        hosts += others.len();
        identities = merge_top(std::iter::once(identities).chain(others), n, sort);
    }
    for a in &mut identities {
        a.locked = is_locked(state, &a.identity, now);
    }
    json(&TopAnswer {
        tracked: activity.len(),
        cap: activity.cap(),
        sort: name.to_string(),
        identities,
        hosts,
    })
}

fn report(state: &State, query: &str) -> Answer {
    let since = param(query, "since").unwrap_or("24h");
    let hours = match humantime::parse_duration(since) {
        Ok(d) if !d.is_zero() => d.as_secs().div_ceil(3600).max(1) as usize,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("since must be a duration such as 24h, not \"{since}\""),
            );
        }
    };
    if hours > HISTORY_HOURS {
        return text(
            StatusCode::BAD_REQUEST,
            format!("only the last {HISTORY_HOURS}h are kept; ask for since={HISTORY_HOURS}h or less"),
        );
    }
    let now = now(state);
    let mut rows = state.observer.activity().report(hours);
    for r in &mut rows {
        r.locked = is_locked(state, &r.identity, now);
    }
    json(&ReportAnswer { hours, rows })
}

async fn explain(state: &State, raw: &str) -> Answer {
    let policy = snapshot(&state.current);
    let value = crate::config::address::lock_key(&policy.config().identity, raw);
    let identity = Identity {
        source: if value.starts_with(crate::config::address::PHP_SCRIPT_PREFIX) {
            IdentitySource::PhpScript
        } else if value.starts_with(crate::config::address::LOCAL_USER_PREFIX) {
            IdentitySource::LocalUser
        } else if value.contains('@') {
            IdentitySource::Auth
        } else {
            IdentitySource::ClientAddress
        },
        value,
    };
    let domain = identity.domain().map(str::to_string);
    let now = state.clock.wall_now();
    let lock = state.locks.lookup(&identity.value, now).map(|e| LockView::new(&e, now));
    let mut activity = state.observer.activity().get(&identity.value);
    if let Some(a) = &mut activity {
        a.locked = lock.is_some();
    }
    let value = identity.value.clone();
    let rules = policy
        .explain(identity)
        .await
        .into_iter()
        .map(|r| RuleView {
            rule: r.rule,
            counted: r.counted.to_string(),
            per: r.scope.to_string(),
            action: r.action.to_string(),
            rate: r.rate.to_string(),
            applies: r.usage.is_some(),
            count: r.usage.map(|u| u.used),
            limit: r.usage.map(|u| u.limit),
            window: format_duration(r.rate.window),
            window_secs: r.rate.window.as_secs(),
            reset_in: r.usage.map(|u| format_duration(u.reset_in)),
            reset_in_secs: r.usage.map(|u| u.reset_in.as_secs()),
            min_ratio: r.min_ratio.map(|m| m.to_string()),
            sent: r.sent,
        })
        .collect();
    json(&ExplainAnswer {
        identity: value,
        domain,
        rules,
        lock,
        activity,
    })
}
