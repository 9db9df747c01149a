// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock review desk: a page served by the status listener (HTML, CSS
//! and JavaScript built into the binary, no external assets), the login,
//! the paginated and filtered lock list, and the actions (lock, unlock,
//! extend, reset counters, bulk unlock), each recorded in the lock's
//! history and in an audit line of the log.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /` | the desk, or its login form |
//! | `POST /login`, `POST /logout` | a session cookie, and its end |
//! | `GET /api/session` | the user and the CSRF token for writes |
//! | `GET /api/locks?q=&state=&source=&rule=&since=&sort=&order=&offset=&limit=` | one page of locks |
//! | `GET /api/locks/ID` | one lock with its history |
//! | `POST /api/actions/{lock,unlock,extend,reset,bulk-unlock}` | JSON [`ActionRequest`] |

use super::api::{ActionAnswer, ActionRequest, FilterRequest, LockView, LocksAnswer, SessionAnswer, percent_decode};
use super::auth::{self, Principal};
use super::status::{Answer, State, json, param, reply, text};
use crate::locks::edit::{self, Actor};
use crate::locks::file::{LockEntry, LockList, LockSource, Timestamp};
use crate::locks::pattern::{Filter, glob, normalise_target};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Largest request body read: a form or an action is a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;
/// Locks on one page of `/api/locks`, by default and at most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

const PAGE: &str = include_str!("desk/page.html");
const LOGIN: &str = include_str!("desk/login.html");
const SCRIPT: &str = include_str!("desk/review.js");
const STYLE: &str = include_str!("desk/review.css");

/// The desk's script and style sheet (no data in them: served to anyone).
pub fn asset(path: &str) -> Answer {
    let mut r = match path {
        "/review.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        _ => reply(StatusCode::OK, "text/css; charset=utf-8", STYLE),
    };
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

pub fn page() -> Answer {
    reply(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login form, with what went wrong, if anything.
pub fn login_page(error: Option<&str>) -> Answer {
    let message = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" id=\"error\">{}</p>", escape_html(e))
    });
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    reply(status, "text/html; charset=utf-8", LOGIN.replace("{{error}}", &message))
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes, or was cut off"),
        )),
    }
}

/// Decodes one `application/x-www-form-urlencoded` value.
fn form_value(body: &str, name: &str) -> Option<String> {
    let raw = param(body, name)?;
    percent_decode(&raw.replace('+', " "))
}

/// `POST /login`: the form's user and password, checked against the users
/// file; a session cookie on success.
pub async fn login(state: &State, req: Request<Incoming>) -> Answer {
    let policy = state.policy();
    let config = &policy.config().status;
    if let Err(why) = auth::same_origin(config, req.headers()) {
        warn!("review desk: login refused: {why}");
        return login_page(Some(
            "This login form did not come from this desk; open the desk again.",
        ));
    }
    let body = match body(req).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    let body = String::from_utf8_lossy(&body);
    let (Some(user), Some(password)) = (form_value(&body, "user"), form_value(&body, "password")) else {
        return login_page(Some("Enter a user name and a password."));
    };
    match state.auth.check_password(config, &user, &password).await {
        Ok(true) => match state.auth.login(&user, config.session_lifetime.0) {
            Some(id) => {
                info!(target: "egress_milter::audit", user = %user, "review desk: logged in");
                let mut r = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "logged in\n");
                if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&id, config)) {
                    r.headers_mut().insert(SET_COOKIE, v);
                }
                r.headers_mut().insert(LOCATION, HeaderValue::from_static("/"));
                r
            }
            None => login_page(Some(
                "The daemon could not make a session (no random numbers); see its log.",
            )),
        },
        Ok(false) => {
            warn!(target: "egress_milter::audit", user = %user, "review desk: login refused: wrong user name or password");
            tokio::time::sleep(auth::FAILED_LOGIN_DELAY).await;
            login_page(Some("Wrong user name or password."))
        }
        Err(e) => {
            warn!("review desk: login impossible: {e}");
            login_page(Some(&format!("Logins are not possible: {e}.")))
        }
    }
}

/// `POST /logout`.
pub fn logout(state: &State, req: &Request<Incoming>) -> Answer {
    let policy = state.policy();
    if let Err(why) = auth::same_origin(&policy.config().status, req.headers()) {
        return text(StatusCode::FORBIDDEN, why);
    }
    state.auth.logout(req.headers());
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "logged out\n");
    if let Ok(v) = HeaderValue::from_str(&auth::cleared_cookie()) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r.headers_mut().insert(LOCATION, HeaderValue::from_static("/"));
    r
}

/// `GET /api/session`.
pub fn session(principal: &Principal) -> Answer {
    json(&SessionAnswer {
        user: principal.who(),
        csrf: principal.csrf().map(str::to_string),
    })
}

fn query_value(query: &str, name: &str) -> Option<String> {
    form_value(query, name).filter(|v| !v.is_empty())
}

/// A point in time given as "within this long" (`1h`) or as RFC 3339.
pub fn parse_since(s: &str, now: SystemTime) -> Result<Timestamp, String> {
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        return now
            .checked_sub(d)
            .map(Timestamp)
            .ok_or_else(|| format!("\"{s}\" is too far back"));
    }
    Timestamp::parse(s)
        .map_err(|e| format!("\"{s}\" is neither a duration such as 1h nor a time such as 2026-11-23T14:00:00Z: {e}"))
}

fn parse_source(s: &str) -> Result<LockSource, String> {
    match s {
        "auto" => Ok(LockSource::Auto),
        "manual" => Ok(LockSource::Manual),
        other => Err(format!("source must be auto or manual, not \"{other}\"")),
    }
}

/// A bulk filter from the wire.
pub fn filter_of(req: &FilterRequest, now: SystemTime) -> Result<Filter, String> {
    Ok(Filter {
        source: req
            .source
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_source)
            .transpose()?,
        rule: req.rule.clone().filter(|s| !s.is_empty()),
        since: req
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_since(s, now))
            .transpose()?,
        identity: req.identity.clone().filter(|s| !s.is_empty()),
        include_expired: false,
    })
}

/// `GET /api/locks`: the filter, the order and one page, all decided here
/// so that the page stays fast on 10 000 locks.
pub fn locks(state: &State, query: &str) -> Answer {
    let now = state.clock().wall_now();
    let entries = state.locks().entries();
    match locks_page(&entries, query, now) {
        Ok(answer) => json(&answer),
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

/// One page of `entries` as `query` asks.
pub fn locks_page(entries: &[Arc<LockEntry>], query: &str, now: SystemTime) -> Result<LocksAnswer, String> {
    let q = query_value(query, "q").map(|q| q.to_lowercase());
    let state = query_value(query, "state").unwrap_or_else(|| "locked".into());
    let source = query_value(query, "source").map(|s| parse_source(&s)).transpose()?;
    let rule = query_value(query, "rule");
    let since = query_value(query, "since").map(|s| parse_since(&s, now)).transpose()?;
    let number = |name: &str, default: usize| -> Result<usize, String> {
        query_value(query, name)
            .map(|v| v.parse::<usize>().map_err(|_| format!("{name} must be a number")))
            .transpose()
            .map(|n| n.unwrap_or(default))
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", DEFAULT_PAGE)?.clamp(1, MAX_PAGE);
    let want_active = match state.as_str() {
        "locked" => Some(true),
        "expired" => Some(false),
        "all" => None,
        other => return Err(format!("state must be locked, expired or all, not \"{other}\"")),
    };
    let mut matched: Vec<&Arc<LockEntry>> = entries
        .iter()
        .filter(|e| want_active.is_none_or(|a| e.is_active(now) == a))
        .filter(|e| source.is_none_or(|s| e.source == s))
        .filter(|e| rule.as_ref().is_none_or(|r| e.rule.as_deref() == Some(r.as_str())))
        .filter(|e| since.is_none_or(|t| e.locked_at >= t))
        .filter(|e| {
            q.as_ref().is_none_or(|q| {
                if q.contains(['*', '?']) {
                    glob(q, &e.identity)
                } else {
                    e.identity.contains(q.as_str()) || e.reason.to_lowercase().contains(q.as_str())
                }
            })
        })
        .collect();
    let sort = query_value(query, "sort").unwrap_or_else(|| "locked_at".into());
    match sort.as_str() {
        "locked_at" => matched.sort_by_key(|e| e.locked_at),
        "identity" => matched.sort_by(|a, b| a.identity.cmp(&b.identity)),
        // Never expiring last.
        "expires_at" => matched.sort_by_key(|e| (e.expires_at.is_none(), e.expires_at)),
        "previous_locks" => matched.sort_by_key(|e| e.previous_locks),
        "rule" => matched.sort_by(|a, b| a.rule.cmp(&b.rule)),
        "source" => matched.sort_by_key(|e| e.source.to_string()),
        other => {
            return Err(format!(
                "sort must be locked_at, identity, expires_at, previous_locks, rule or source, not \"{other}\""
            ));
        }
    }
    let default_desc = sort == "locked_at" || sort == "previous_locks";
    let desc = match query_value(query, "order").as_deref() {
        None => default_desc,
        Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(format!("order must be asc or desc, not \"{other}\"")),
    };
    if desc {
        matched.reverse();
    }
    Ok(LocksAnswer {
        total: entries.len(),
        matched: matched.len(),
        offset,
        limit,
        locks: matched
            .iter()
            .skip(offset)
            .take(limit)
            .map(|e| LockView::new(e, now))
            .collect(),
    })
}

/// `GET /api/locks/ID`: the entry, in force or lapsed, with its history.
pub fn one_lock(state: &State, raw: &str) -> Answer {
    let policy = state.policy();
    let id = normalise_target(&policy.config().identity, raw).unwrap_or_else(|_| raw.trim().to_lowercase());
    let now = state.clock().wall_now();
    match state.locks().entries().iter().find(|e| e.identity == id) {
        Some(e) => json(&LockView::new(e, now)),
        None => text(StatusCode::NOT_FOUND, format!("{id} is not in the lock list")),
    }
}

fn expiry(expires: Option<&str>) -> Result<Option<Duration>, String> {
    match expires.map(str::trim) {
        None | Some("") | Some("never") => Ok(None),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(format!(
                "expires must be a duration such as 24h or 7d, or never; not \"{s}\""
            )),
        },
    }
}

/// `POST /api/actions/NAME`.
pub async fn action(
    state: &State,
    principal: &Principal,
    name: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Answer {
    let who = principal.who();
    let policy = state.policy();
    let config = policy.config();
    let refuse = |status: StatusCode, why: String| {
        warn!(target: "egress_milter::audit", who = %who, action = %name, %peer, "admin action refused: {why}");
        text(status, why)
    };
    if let Err(why) = auth::check_write(principal, &config.status, req.headers()) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let json_body = auth::header(req.headers(), "content-type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json_body {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions take a JSON body (Content-Type: application/json)".into(),
        );
    }
    let body = match body(req).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    let request: ActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the action's JSON does not fit: {e}")),
    };
    let actor = match Actor::new(who.clone(), &request.reason) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let now = state.clock().wall_now();
    let target = match (name, request.identity.as_deref()) {
        ("bulk-unlock", _) => None,
        (_, Some(raw)) => match normalise_target(&config.identity, raw) {
            Ok(id) => Some(id),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
        },
        (_, None) => return refuse(StatusCode::BAD_REQUEST, format!("{name} needs an identity")),
    };
    let id = target.clone().unwrap_or_default();
    let expires = match expiry(request.expires.as_deref()) {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    type Edit = Box<dyn FnOnce(&mut LockList) -> Result<(Vec<LockEntry>, bool), String> + Send>;
    let edit: Edit = match name {
        "lock" => {
            let (id, actor, note) = (id.clone(), actor.clone(), request.note.clone());
            Box::new(move |list| edit::lock(list, &id, &actor, expires, note, now).map(|e| (vec![e], true)))
        }
        "unlock" => {
            let (id, actor) = (id.clone(), actor.clone());
            Box::new(move |list| edit::unlock(list, &id, &actor, now).map(|e| (vec![e], true)))
        }
        "extend" => {
            let (id, actor) = (id.clone(), actor.clone());
            Box::new(move |list| edit::extend(list, &id, &actor, expires, now).map(|e| (vec![e], true)))
        }
        "reset" => {
            let (id, actor) = (id.clone(), actor.clone());
            Box::new(move |list| {
                let changed = edit::record_reset(list, &id, &actor, now);
                Ok((list.get(&id).cloned().into_iter().collect(), changed))
            })
        }
        "bulk-unlock" => {
            let filter = match filter_of(&request.filter.clone().unwrap_or_default(), now) {
                Ok(f) => f,
                Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
            };
            let (actor, all, dry_run) = (actor.clone(), request.all, request.dry_run);
            Box::new(move |list| {
                edit::bulk_unlock(list, &filter, all, &actor, dry_run, now).map(|v| {
                    let changed = !dry_run && !v.is_empty();
                    (v, changed)
                })
            })
        }
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no action \"{other}\"; try lock, unlock, extend, reset or bulk-unlock"),
            );
        }
    };
    let locks = state.locks().clone();
    let outcome = tokio::task::spawn_blocking(move || locks.edit(edit)).await;
    let (changed, lifted) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return refuse(StatusCode::CONFLICT, e),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the action failed: {e}")),
    };
    let mut forgotten = lifted;
    if name == "reset" {
        forgotten.push(id.clone());
    }
    if !forgotten.is_empty() {
        (state.forget)(&forgotten);
    }
    let dry_run = name == "bulk-unlock" && request.dry_run;
    let identities = changed.iter().map(|e| e.identity.as_str()).collect::<Vec<_>>();
    info!(
        target: "egress_milter::audit",
        who = %who,
        action = %name,
        identity = %if name == "bulk-unlock" { identities.join(",") } else { id.clone() },
        changed = changed.len(),
        dry_run,
        reason = %actor.reason,
        %peer,
        "admin action{}",
        if dry_run { " [dry run, not done]" } else { "" }
    );
    let message = match name {
        "lock" => format!("locked {id}"),
        "unlock" => format!("unlocked {id}"),
        "extend" => format!("extended the lock of {id}"),
        "reset" => format!("cleared the counters of {id}"),
        _ if dry_run => format!("would unlock {} lock(s)", changed.len()),
        _ => format!("unlocked {} lock(s)", changed.len()),
    };
    json(&ActionAnswer {
        message,
        dry_run,
        locks: changed.iter().map(|e| LockView::new(e, now)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize, now: SystemTime) -> Vec<Arc<LockEntry>> {
        (0..n)
            .map(|i| {
                Arc::new(LockEntry {
                    identity: format!("user{i:05}@example.com"),
                    source: if i % 2 == 0 {
                        LockSource::Auto
                    } else {
                        LockSource::Manual
                    },
                    locked_at: Timestamp(now - Duration::from_secs(i as u64)),
                    reason: format!("rule \"r{}\" exceeded", i % 3),
                    rule: Some(format!("r{}", i % 3)),
                    previous_locks: (i % 4) as u32,
                    expires_at: None,
                    note: None,
                    history: Vec::new(),
                })
            })
            .collect()
    }

    /// The page's data for 10 000 locks: filtered, sorted and cut to one
    /// page on the server, well within what a page load may take (it was
    /// 10 ms for two such queries in a debug build on the shared 2-core test
    /// machine, one page 10.7 KB).
    #[test]
    fn ten_thousand_locks_make_one_small_page_fast() {
        let now = SystemTime::now();
        let all = entries(10_000, now);
        let started = std::time::Instant::now();
        let page = locks_page(&all, "sort=locked_at&order=desc&limit=50", now).unwrap();
        let filtered = locks_page(&all, "q=user09*&rule=r1&source=manual", now).unwrap();
        let took = started.elapsed();
        assert_eq!(page.total, 10_000);
        assert_eq!(page.matched, 10_000);
        assert_eq!(page.locks.len(), 50);
        assert_eq!(page.locks[0].identity, "user00000@example.com", "newest first");
        assert!(
            filtered
                .locks
                .iter()
                .all(|l| l.identity.starts_with("user09") && l.rule.as_deref() == Some("r1"))
        );
        let bytes = serde_json::to_vec(&page).unwrap().len();
        assert!(bytes < 30_000, "one page is small: {bytes} bytes");
        eprintln!("two queries over 10000 locks: {took:?}, page {bytes} bytes");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let now = SystemTime::now();
        let all = entries(3, now);
        assert!(
            locks_page(&all, "sort=bogus", now)
                .unwrap_err()
                .contains("sort must be")
        );
        assert!(locks_page(&all, "state=x", now).is_err());
        assert!(locks_page(&all, "since=yesterday", now).is_err());
        assert_eq!(locks_page(&all, "since=1h&limit=100000", now).unwrap().limit, MAX_PAGE);
    }

    #[test]
    fn login_errors_are_escaped() {
        assert_eq!(escape_html("<b>\"x\"&'"), "&lt;b&gt;&quot;x&quot;&amp;&#39;");
        assert_eq!(
            form_value("user=a+b%40x&password=p%26w", "user").as_deref(),
            Some("a b@x")
        );
        assert_eq!(
            form_value("user=a+b%40x&password=p%26w", "password").as_deref(),
            Some("p&w")
        );
    }
}
