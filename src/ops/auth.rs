// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Who may read per-identity data and change locks through the status
//! listener, and the checks that keep a browser from being used against it.
//!
//! Four ways in, tried in this order:
//! - `Authorization: Bearer TOKEN`: the local token the daemon writes at
//!   start to `status.token_file` (mode 0600, its own user), which the CLI
//!   on the host sends. A browser never sends it by itself, so requests
//!   with it need no CSRF token.
//! - `Authorization: Basic`: a user of `status.users_file` (argon2id hashes).
//! - The `egress_session` cookie of a login on the page (`POST /login`).
//! - `status.proxy_user_header` from an address in `status.trusted_proxies`,
//!   with the secret of `status.proxy_secret_file` in
//!   `status.proxy_secret_header` when that is set (required for a proxy
//!   on this host, from whose address any local user can connect too).
//!
//! The last three are what a browser may send on its own to a page that an
//! attacker makes it load, so every state-changing request with them must
//! carry the CSRF token of the session or user (`X-CSRF-Token`, from
//! `GET /api/session`) and an `Origin` (or `Referer`) of the desk itself.

use crate::config::StatusConfig;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hyper::HeaderMap;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The session cookie's name.
pub const COOKIE: &str = "egress_session";
/// The most logins held at once; the oldest goes first. A session is 100
/// bytes or so: this bounds memory whatever logs in.
const MAX_SESSIONS: usize = 256;
/// Password checks at once: each argon2id check takes 19 MiB and tens of
/// milliseconds, so 2 bound both whatever the number of connections.
const VERIFY_SLOTS: usize = 2;
/// How long a refused login waits before it answers, to slow guessing.
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);
/// The longest user name and password read.
const MAX_CREDENTIAL: usize = 256;

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The local token: the CLI on the host, with the Unix user it names.
    Local { actor: String },
    /// A user of the password file, by HTTP basic auth.
    Basic { user: String, csrf: String },
    /// A login on the page.
    Session { user: String, csrf: String },
    /// A user a trusted reverse proxy authenticated.
    Proxy { user: String, csrf: String },
}

impl Principal {
    /// The name the audit log and the lock's history record.
    pub fn who(&self) -> String {
        match self {
            Principal::Local { actor } => format!("local:{actor}"),
            Principal::Basic { user, .. } | Principal::Session { user, .. } => user.clone(),
            Principal::Proxy { user, .. } => format!("proxy:{user}"),
        }
    }

    /// The CSRF token a state-changing request must carry, if any.
    pub fn csrf(&self) -> Option<&str> {
        match self {
            Principal::Local { .. } => None,
            Principal::Basic { csrf, .. } | Principal::Session { csrf, .. } | Principal::Proxy { csrf, .. } => {
                Some(csrf)
            }
        }
    }
}

struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// The listener's authentication state.
pub struct Auth {
    /// The local token, as written to the token file.
    token: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// CSRF tokens of basic-auth and proxy users (at most one per user of
    /// the password file, or per name a trusted proxy sends: bounded).
    user_csrf: Mutex<HashMap<String, String>>,
    verify_slots: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(format!("no random numbers: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes the local token: a fresh file of mode 0600 renamed into place, so
/// no reader ever sees a half-written or more widely readable one.
pub fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".status.token.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot write the status token {} (status.token_file): {e}",
                path.display()
            ),
        )
    })
}

/// Reads the local token (the CLI's side).
pub fn read_token(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            format!(
                "cannot read the status token {} (status.token_file): {e}; run this as root or as the daemon's user",
                path.display()
            )
        })
}

/// The users of a password file: `name:hash` lines, `#` comments.
pub fn read_users(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the users file {} (status.users_file): {e}", path.display()))?;
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(format!(
                "{}: line {}: expected NAME:HASH, as `egress-milter passwd NAME` prints",
                path.display(),
                n + 1
            ));
        };
        if PasswordHash::new(hash).is_err() {
            return Err(format!(
                "{}: line {}: the hash of \"{name}\" is not an argon2 PHC string ($argon2id$...); make one with `egress-milter passwd {name}`",
                path.display(),
                n + 1
            ));
        }
        users.insert(name.to_string(), hash.to_string());
    }
    Ok(users)
}

/// An argon2id hash of `password` in PHC form, for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no random numbers: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (a PHC string).
pub fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Decodes standard base64 (for basic auth); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A header's value as text, if it is there and is.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Names from the outside (users, actors) as the log and history show
/// them: printable, short.
fn clean_name(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_graphic() || !c.is_ascii() && !c.is_control()))
    .then(|| s.to_string())
}

impl Auth {
    /// Makes a fresh local token and writes it to `token_path`.
    pub fn new(token_path: &Path) -> std::io::Result<Auth> {
        let token = random_hex(32)?;
        write_token(token_path, &token)?;
        Ok(Self::with_token(token))
    }

    /// With a given token (tests).
    pub fn with_token(token: String) -> Auth {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
            user_csrf: Mutex::new(HashMap::new()),
            verify_slots: Arc::new(Semaphore::new(VERIFY_SLOTS)),
        }
    }

    fn user_csrf(&self, user: &str) -> Option<String> {
        let mut map = lock(&self.user_csrf);
        if let Some(t) = map.get(user) {
            return Some(t.clone());
        }
        if map.len() >= MAX_SESSIONS {
            map.clear();
        }
        let token = random_hex(16).ok()?;
        map.insert(user.to_string(), token.clone());
        Some(token)
    }

    /// Checks a user's password against the users file, at most
    /// [`VERIFY_SLOTS`] at a time.
    pub async fn check_password(&self, config: &StatusConfig, user: &str, password: &str) -> Result<bool, String> {
        let Some(path) = config.users_file.clone() else {
            return Err("no users are configured (status.users_file)".into());
        };
        if user.len() > MAX_CREDENTIAL || password.len() > MAX_CREDENTIAL {
            return Ok(false);
        }
        let Ok(_slot) = self.verify_slots.clone().acquire_owned().await else {
            return Err("the password checker is closed".into());
        };
        let (user, password) = (user.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || {
            let users = read_users(&path)?;
            Ok(match users.get(&user) {
                Some(hash) => verify_hash(hash, &password),
                None => {
                    // As long as for a known user, so that a guesser cannot
                    // tell which names exist.
                    let _ = verify_hash(DUMMY_HASH, &password);
                    false
                }
            })
        })
        .await
        .map_err(|e| format!("password check failed: {e}"))?
    }

    /// Starts a session for `user`: the cookie value.
    pub fn login(&self, user: &str, lifetime: Duration) -> Option<String> {
        let id = random_hex(32).ok()?;
        let csrf = random_hex(16).ok()?;
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                csrf,
                expires: now + lifetime,
            },
        );
        Some(id)
    }

    /// Ends the session of the request, if it has one.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            lock(&self.sessions).remove(id);
        }
    }

    /// Who the request is from, or why it is refused (`Err(None)`: it
    /// carries no credentials at all).
    pub async fn authenticate(
        &self,
        config: &StatusConfig,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Principal, Option<String>> {
        if let Some(value) = header(headers, "authorization") {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                if same_secret(rest.trim(), &self.token) {
                    let actor = header(headers, "x-egress-actor")
                        .and_then(clean_name)
                        .unwrap_or_else(|| "cli".into());
                    return Ok(Principal::Local { actor });
                }
                return Err(Some(
                    "the token is not this daemon's (it writes a new one at each start)".into(),
                ));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64_decode(rest.trim()).and_then(|b| String::from_utf8(b).ok());
                let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                    return Err(Some("malformed basic credentials".into()));
                };
                return match self.check_password(config, user, password).await {
                    Ok(true) => {
                        let user = clean_name(user).ok_or_else(|| Some("bad user name".to_string()))?;
                        let csrf = self.user_csrf(&user).ok_or(None)?;
                        Ok(Principal::Basic { user, csrf })
                    }
                    Ok(false) => {
                        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                        Err(Some("wrong user name or password".into()))
                    }
                    Err(e) => Err(Some(e)),
                };
            }
            return Err(Some(format!("authorization scheme \"{scheme}\" is not served")));
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let now = Instant::now();
            let sessions = lock(&self.sessions);
            return match sessions.get(id) {
                Some(s) if s.expires > now => Ok(Principal::Session {
                    user: s.user.clone(),
                    csrf: s.csrf.clone(),
                }),
                _ => Err(Some("the login has expired; log in again".into())),
            };
        }
        let peer = peer.to_canonical();
        if config.trusted_proxies.iter().any(|p| p.to_canonical() == peer)
            && let Some(user) = proxy_user(config, headers)?
        {
            let csrf = self.user_csrf(&format!("proxy:{user}")).ok_or(None)?;
            return Ok(Principal::Proxy { user, csrf });
        }
        Err(None)
    }
}

/// The user a trusted proxy names in `proxy_user_header`, if it names one.
/// With `proxy_secret_file`, only if the request also carries the secret
/// in `proxy_secret_header` (compared in constant time): a request from a
/// trusted address without it is from some other process there. One copy
/// of each header: with two, which one the proxy set cannot be told.
fn proxy_user(config: &StatusConfig, headers: &HeaderMap) -> Result<Option<String>, Option<String>> {
    let user_header = config.proxy_user_header.as_str();
    let mut users = headers.get_all(user_header).iter();
    let Some(user) = users.next() else {
        return Ok(None);
    };
    if users.next().is_some() {
        return Err(Some(format!(
            "{user_header} sent more than once: not believed (the proxy must replace the client's copy)"
        )));
    }
    if config.proxy_secret_file.is_some() {
        let secret_header = config.proxy_secret_header.as_str();
        let mut sent = headers.get_all(secret_header).iter();
        let one = match (sent.next(), sent.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        };
        let matches = match (&config.proxy_secret, one) {
            (Some(secret), Some(sent)) => same_secret(sent, secret.expose()),
            _ => false,
        };
        if !matches {
            return Err(Some(format!(
                "{user_header} came without the proxy's secret in {secret_header} (status.proxy_secret_file), or with a wrong one: not believed"
            )));
        }
    }
    match user.to_str().ok().and_then(clean_name) {
        Some(user) => Ok(Some(user)),
        None => Err(Some(format!("{user_header} does not name a user"))),
    }
}

/// The origin that state-changing requests must come from.
pub fn expected_origin(config: &StatusConfig, headers: &HeaderMap) -> Option<String> {
    if let Some(o) = &config.public_origin {
        return Some(o.trim_end_matches('/').to_string());
    }
    header(headers, "host").map(|h| format!("http://{h}"))
}

/// Whether a request from a browser comes from the desk's own pages: its
/// `Origin`, or failing that its `Referer`, is the desk's origin. A request
/// with neither is refused (every current browser sends `Origin` on POST).
pub fn same_origin(config: &StatusConfig, headers: &HeaderMap) -> Result<(), String> {
    let Some(expected) = expected_origin(config, headers) else {
        return Err("the request has no Host header".into());
    };
    if let Some(origin) = header(headers, "origin") {
        return if origin == expected {
            Ok(())
        } else {
            Err(format!(
                "cross-origin request from \"{origin}\" refused (expected {expected})"
            ))
        };
    }
    match header(headers, "referer") {
        Some(r) if r == expected || r.starts_with(&format!("{expected}/")) => Ok(()),
        Some(r) => Err(format!("request from page \"{r}\" refused (expected {expected})")),
        None => Err("state-changing request without Origin or Referer refused".into()),
    }
}

/// Checks a state-changing request: the CSRF token of its principal and
/// its origin. The local token needs neither.
pub fn check_write(principal: &Principal, config: &StatusConfig, headers: &HeaderMap) -> Result<(), String> {
    let Some(csrf) = principal.csrf() else {
        return Ok(());
    };
    match header(headers, "x-csrf-token") {
        Some(t) if same_secret(t, csrf) => {}
        Some(_) => return Err("wrong CSRF token: reload the page".into()),
        None => return Err("missing CSRF token (X-CSRF-Token, from GET /api/session)".into()),
    }
    if header(headers, "origin").is_some() || header(headers, "referer").is_some() {
        return same_origin(config, headers);
    }
    // Neither: not a browser (curl with basic auth): the CSRF token,
    // which only an authenticated reader can have, suffices.
    Ok(())
}

/// The cookie that starts a session.
pub fn session_cookie(id: &str, config: &StatusConfig) -> String {
    let secure = config
        .public_origin
        .as_deref()
        .is_some_and(|o| o.starts_with("https://"));
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        config.session_lifetime.0.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The cookie that ends one.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Where the CLI finds the token: the configured file or its default.
pub fn token_path(config: &crate::config::Config) -> PathBuf {
    config.status.token_path(&config.locks.file)
}

/// A hash of a random password, checked against when the user is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZWdyZXNzLW1pbHRlci1kdW1teQ$2ZxXm4ZbI8a0mEvXbtvwX1zxq2Xw6y7k9RHjBL4Y6pQ";

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn config() -> StatusConfig {
        StatusConfig::default()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hashes_verify_and_the_dummy_is_well_formed() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_hash(&h, "s3cret"));
        assert!(!verify_hash(&h, "S3cret"));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a*b").is_none());
    }

    #[tokio::test]
    async fn credentials_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, format!("# desk\nalice:{}\n", hash_password("pw").unwrap())).unwrap();
        let mut c = config();
        c.users_file = Some(users);
        c.trusted_proxies = vec!["192.0.2.1".parse().unwrap()];
        let auth = Auth::with_token("t0ken".into());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let who = auth
            .authenticate(
                &c,
                &headers(&[("authorization", "Bearer t0ken"), ("x-egress-actor", "root")]),
                peer,
            )
            .await;
        assert_eq!(who, Ok(Principal::Local { actor: "root".into() }));
        assert!(
            auth.authenticate(&c, &headers(&[("authorization", "Bearer nope")]), peer)
                .await
                .is_err()
        );
        let ok = auth
            .authenticate(&c, &headers(&[("authorization", "Basic YWxpY2U6cHc=")]), peer)
            .await
            .unwrap();
        assert_eq!(ok.who(), "alice");
        // alice:wrong
        assert!(
            auth.authenticate(&c, &headers(&[("authorization", "Basic YWxpY2U6d3Jvbmc=")]), peer)
                .await
                .is_err()
        );
        assert_eq!(auth.authenticate(&c, &headers(&[]), peer).await, Err(None));
        // The proxy header counts only from a trusted proxy.
        let h = headers(&[("x-remote-user", "bob")]);
        assert_eq!(auth.authenticate(&c, &h, peer).await, Err(None));
        let bob = auth.authenticate(&c, &h, "192.0.2.1".parse().unwrap()).await.unwrap();
        assert_eq!(bob.who(), "proxy:bob");
        // A session.
        let id = auth.login("alice", Duration::from_secs(60)).unwrap();
        let cookie = format!("other=1; {COOKIE}={id}");
        let s = auth
            .authenticate(&c, &headers(&[("cookie", &cookie)]), peer)
            .await
            .unwrap();
        assert_eq!(s.who(), "alice");
        auth.logout(&headers(&[("cookie", &cookie)]));
        assert!(
            auth.authenticate(&c, &headers(&[("cookie", &cookie)]), peer)
                .await
                .is_err()
        );
    }

    /// Issue 18: behind a proxy on this host, the user header alone is
    /// what any local process can send; the secret is what only the proxy
    /// has.
    #[tokio::test]
    async fn a_proxy_user_is_believed_only_with_the_secret_when_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.secret");
        let secret = "5e".repeat(20);
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let mut c = config();
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.proxy_secret_file = Some(file.clone());
        let auth = Auth::with_token("t0ken".into());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let refused = |r: Result<Principal, Option<String>>| match r {
            Err(Some(why)) => why,
            other => panic!("expected a refusal with a reason, got {other:?}"),
        };
        // Configured but not read (Config::read, not read_with_secrets):
        // nobody is believed.
        let with_secret = headers(&[("x-remote-user", "support"), ("x-egress-proxy-secret", &secret)]);
        let why = refused(auth.authenticate(&c, &with_secret, local).await);
        assert!(
            why.contains("without the proxy's secret in X-Egress-Proxy-Secret"),
            "{why}"
        );
        c.proxy_secret = Some(crate::config::secret::read_secret_file(&file).unwrap());
        for forged in [
            headers(&[("x-remote-user", "support")]),
            headers(&[("x-remote-user", "support"), ("x-egress-proxy-secret", "")]),
            headers(&[("x-remote-user", "support"), ("x-egress-proxy-secret", &secret[1..])]),
            headers(&[
                ("x-remote-user", "support"),
                ("x-egress-proxy-secret", &format!("{secret}0")),
            ]),
            headers(&[
                ("x-remote-user", "support"),
                ("x-egress-proxy-secret", &"5f".repeat(20)),
            ]),
            // The right secret beside a wrong one, or a second user.
            headers(&[
                ("x-remote-user", "support"),
                ("x-egress-proxy-secret", "guess"),
                ("x-egress-proxy-secret", &secret),
            ]),
            headers(&[
                ("x-remote-user", "alice"),
                ("x-remote-user", "support"),
                ("x-egress-proxy-secret", &secret),
            ]),
        ] {
            let why = refused(auth.authenticate(&c, &forged, local).await);
            assert!(why.contains("not believed"), "{why}");
            assert!(!why.contains(&secret), "{why}");
        }
        let who = auth.authenticate(&c, &with_secret, local).await.unwrap();
        assert_eq!(who.who(), "proxy:support");
        // ::ffff:127.0.0.1 is the same proxy.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            auth.authenticate(&c, &with_secret, mapped).await.unwrap().who(),
            "proxy:support"
        );
        // The secret does not make an untrusted address a proxy.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(auth.authenticate(&c, &with_secret, other).await, Err(None));
        // No user header: no proxy login, whatever the secret.
        assert_eq!(
            auth.authenticate(&c, &headers(&[("x-egress-proxy-secret", &secret)]), local)
                .await,
            Err(None)
        );
        // The configuration never shows the secret.
        assert!(!format!("{c:?}").contains(&secret), "{c:?}");
    }

    #[test]
    fn writes_need_the_token_and_the_origin() {
        let c = config();
        let p = Principal::Session {
            user: "alice".into(),
            csrf: "abc".into(),
        };
        let host = ("host", "127.0.0.1:7026");
        assert!(check_write(&p, &c, &headers(&[host, ("origin", "http://127.0.0.1:7026")])).is_err());
        assert!(check_write(&p, &c, &headers(&[host, ("x-csrf-token", "abd")])).is_err());
        let good = [host, ("x-csrf-token", "abc"), ("origin", "http://127.0.0.1:7026")];
        assert!(check_write(&p, &c, &headers(&good)).is_ok());
        let forged = [host, ("x-csrf-token", "abc"), ("origin", "http://evil.example")];
        assert!(check_write(&p, &c, &headers(&forged)).is_err());
        let referer = [host, ("x-csrf-token", "abc"), ("referer", "http://127.0.0.1:7026/")];
        assert!(check_write(&p, &c, &headers(&referer)).is_ok());
        let local = Principal::Local { actor: "root".into() };
        assert!(check_write(&local, &c, &headers(&[host])).is_ok());
        assert!(
            same_origin(&c, &headers(&[host])).is_err(),
            "a login form needs an origin"
        );
    }

    #[test]
    fn the_token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.token");
        let auth = Auth::new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(same_secret(&read_token(&path).unwrap(), &auth.token));
    }
}
