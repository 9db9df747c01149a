// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! `top`, `explain` and `report`: ask the running daemon through its status
//! listener (`[status] listen`) with a minimal HTTP/1.1 GET client.

use crate::admin::Failure;
use crate::admin::output::{self, Printed};
use crate::config::Config;
use crate::ops::activity::{Activity, Counts, OTHER};
use crate::ops::api::{ExplainAnswer, LockView, ReportAnswer, RuleView, TopAnswer, percent_encode};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a `top` of 1000 or a report of 100000 identities fits).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// The status listener's address, or why there is none.
pub fn address(config: &Config) -> Result<SocketAddr, Failure> {
    config.status.listen.ok_or_else(|| {
        Failure::new(
            "the status listener is off: set [status] listen = \"127.0.0.1:7026\" in the configuration and restart egress-milter",
        )
    })
}

/// `GET path` from the status listener; the body of a 200 answer.
pub fn get(config: &Config, path: &str) -> Result<String, Failure> {
    request(config, "GET", path, None)
}

/// `POST path` with a JSON body; the body of a 200 answer.
pub fn post(config: &Config, path: &str, body: &str) -> Result<String, Failure> {
    request(config, "POST", path, Some(body))
}

/// One request with the local token, which the daemon wrote at start and
/// only root and the daemon's user can read.
fn request(config: &Config, method: &str, path: &str, body: Option<&str>) -> Result<String, Failure> {
    let addr = address(config)?;
    let unreachable = |e: std::io::Error| {
        Failure::new(format!(
            "cannot reach the status listener at {addr} (status.listen): {e}; is egress-milter running?"
        ))
    };
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(unreachable)?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(unreachable)?;
    stream.set_write_timeout(Some(READ_TIMEOUT)).map_err(unreachable)?;
    // Read once the daemon is known to listen: then an unreadable token is
    // the problem to report.
    let token = crate::ops::auth::read_token(&crate::ops::auth::token_path(config)).map_err(Failure::new)?;
    let body = body.unwrap_or("");
    let content = if method == "POST" {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: egress-milter\r\nAccept: */*\r\nAuthorization: Bearer {token}\r\nX-Egress-Actor: {}\r\n{content}Connection: close\r\n\r\n{body}",
        crate::admin::actor_name()
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(unreachable)?;
    let (status, body) = parse_response(&raw)
        .ok_or_else(|| Failure::new(format!("the status listener at {addr} sent an answer that is not HTTP")))?;
    if status != 200 {
        return Err(Failure::new(format!(
            "the status listener at {addr} answered {status} to {method} {path}: {}",
            body.trim()
        )));
    }
    Ok(body)
}

/// Splits an HTTP/1.1 answer into status code and body (de-chunked).
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).ok()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `reset IDENTITY --reason TEXT`: the daemon empties the identity's
/// counters (here and, in a fleet, on Redis); its lock stays as it is.
pub fn reset(config: &Config, identity: &str, reason: &str) -> Result<String, Failure> {
    let request = crate::ops::api::ActionRequest {
        identity: Some(identity.to_string()),
        reason: reason.to_string(),
        ..Default::default()
    };
    let body = serde_json::to_string(&request).map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
    let answer: crate::ops::api::ActionAnswer = decode(&post(config, "/api/actions/reset", &body)?)?;
    Ok(format!("{}\n", answer.message))
}

fn decode<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| Failure::new(format!("unexpected answer from the status listener: {e}")))
}

/// Rows of columns, left-aligned, two spaces apart (numbers right-aligned).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let w = widths[c];
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit() || b == b'/');
            if numeric {
                let _ = write!(line, "{cell:>w$}  ");
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn refused(c: &Counts) -> u32 {
    c.tempfailed.saturating_add(c.rejected)
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

/// The `top` table from an answer of `/api/identities`.
pub fn render_top(answer: &TopAnswer, addr: SocketAddr) -> String {
    let mut out = format!(
        "egress-milter top  {addr}  {}  identities tracked {}/{}, sorted by {}\n\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        answer.tracked,
        answer.cap,
        answer.sort
    );
    if answer.hosts > 1 {
        out.insert_str(
            out.len() - 1,
            &format!(
                "fleet of {} hosts (counts summed; other hosts' as of the last 5 s)\n",
                answer.hosts
            ),
        );
    }
    if answer.identities.is_empty() {
        out.push_str("no mail in the last hour\n");
        return out;
    }
    let mut rows = vec![
        [
            "IDENTITY",
            "MSGS/1m",
            "RCPTS/1m",
            "REFUSED/1m",
            "MSGS/1h",
            "RCPTS/1h",
            "REFUSED/1h",
            "HELD/1h",
            "BOUNCED/1h",
            "LOCKED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in &answer.identities {
        rows.push(vec![
            a.identity.clone(),
            a.last_minute.messages.to_string(),
            a.last_minute.recipients.to_string(),
            refused(&a.last_minute).to_string(),
            a.last_hour.messages.to_string(),
            a.last_hour.recipients.to_string(),
            refused(&a.last_hour).to_string(),
            a.last_hour.held.to_string(),
            a.last_hour.bounced.to_string(),
            yes_no(a.locked),
        ]);
    }
    out.push_str(&table(&rows));
    if answer.identities.iter().any(|a| a.identity == OTHER) {
        out.push_str(&format!(
            "\n{OTHER}: identities first seen while {} were tracked (status.max_identities)\n",
            answer.cap
        ));
    }
    out
}

/// `top`: the busiest identities, once (`--once`, table or JSON) or
/// redrawn every `interval` until interrupted.
pub fn top(
    config: &Config,
    count: usize,
    sort: &str,
    interval: Duration,
    once: bool,
    json: bool,
) -> Result<String, Failure> {
    let path = format!("/api/identities?top={count}&sort={}", percent_encode(sort));
    let addr = address(config)?;
    if once {
        let body = get(config, &path)?;
        if json {
            return Ok(body);
        }
        return Ok(render_top(&decode(&body)?, addr));
    }
    loop {
        let screen = get(config, &path).and_then(|b| Ok(render_top(&decode(&b)?, addr)));
        let screen = screen.unwrap_or_else(|f| format!("egress-milter top  {addr}\n\n{}\n", f.message));
        // Home, clear screen, then the table; until the reader goes away
        // (`top | head`, a closed terminal): nothing is left to draw for.
        if output::print(&format!("\x1b[H\x1b[2J{screen}"))? == Printed::ReaderGone {
            return Ok(String::new());
        }
        std::thread::sleep(interval);
    }
}

/// `explain IDENTITY`: every rule's count for it, and its lock.
pub fn explain(config: &Config, identity: &str, json: bool) -> Result<String, Failure> {
    let body = get(config, &format!("/api/identities/{}", percent_encode(identity.trim())))?;
    if json {
        return Ok(body);
    }
    Ok(render_explain(&decode(&body)?))
}

/// The text `explain` prints for an answer.
pub fn render_explain(answer: &ExplainAnswer) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "identity:   {}", answer.identity);
    if let Some(domain) = &answer.domain {
        let _ = writeln!(out, "domain:     {domain}");
    }
    explain_lock(&mut out, answer.lock.as_ref());
    explain_activity(&mut out, answer.activity.as_ref());
    out.push('\n');
    let mut rows = vec![
        [
            "RULE",
            "ACTION",
            "COUNT",
            "LIMIT",
            "COUNTED",
            "PER",
            "WINDOW",
            "RESETS IN",
        ]
        .map(String::from)
        .to_vec(),
    ];
    rows.extend(answer.rules.iter().map(rule_row));
    if rows.len() == 1 {
        out.push_str("no rules configured\n");
    } else {
        out.push_str(&table(&rows));
    }
    for r in answer.rules.iter().filter(|r| r.applies) {
        if let (Some(min), Some(sent)) = (&r.min_ratio, r.sent) {
            let bounced = r.count.unwrap_or(0);
            let share = if sent == 0 {
                "no recipients sent".to_string()
            } else {
                format!("{:.1}%", f64::from(bounced) * 100.0 / f64::from(sent))
            };
            let _ = writeln!(
                out,
                "{}: {bounced} bounced of {sent} recipients sent in {} ({share}); acts at {min} and over {}",
                r.rule,
                r.window,
                r.limit.unwrap_or(0)
            );
        }
    }
    out
}

fn explain_lock(out: &mut String, lock: Option<&LockView>) {
    let Some(lock) = lock else {
        let _ = writeln!(out, "lock:       not locked");
        return;
    };
    let _ = writeln!(
        out,
        "lock:       locked since {} ({}): {}",
        lock.locked_at, lock.source, lock.reason
    );
    let expires = lock.expires_at.as_deref().unwrap_or("never (until removed)");
    let _ = writeln!(out, "expires:    {expires}");
}

fn explain_activity(out: &mut String, activity: Option<&Activity>) {
    let Some(a) = activity else {
        let _ = writeln!(out, "activity:   none recorded");
        return;
    };
    for (name, c) in [("last 1m", &a.last_minute), ("last 1h", &a.last_hour)] {
        let _ = writeln!(
            out,
            "{:<12}{} messages, {} recipients accepted; {} tempfailed, {} rejected, {} held; {} bounced",
            format!("{name}:"),
            c.messages,
            c.recipients,
            c.tempfailed,
            c.rejected,
            c.held,
            c.bounced
        );
    }
    if !a.queue_ids.is_empty() {
        let _ = writeln!(out, "queue ids:  {}", a.queue_ids.join(" "));
    }
}

fn rule_row(r: &RuleView) -> Vec<String> {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    vec![
        r.rule.clone(),
        r.action.clone(),
        if r.applies {
            or_dash(r.count.map(|c| c.to_string()))
        } else {
            "-".into()
        },
        if r.applies {
            or_dash(r.limit.map(|l| l.to_string()))
        } else {
            "exempt".into()
        },
        r.counted.clone(),
        r.per.clone(),
        r.window.clone(),
        if r.applies {
            or_dash(r.reset_in.clone())
        } else {
            "-".into()
        },
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `report --since D`: one row per identity (table, `--csv` or `--json`).
pub fn report(config: &Config, since: &str, csv: bool, json: bool) -> Result<String, Failure> {
    let body = get(config, &format!("/api/report?since={}", percent_encode(since)))?;
    if json {
        return Ok(body);
    }
    let answer: ReportAnswer = decode(&body)?;
    let header = [
        "domain",
        "identity",
        "messages",
        "recipients",
        "tempfailed",
        "rejected",
        "held",
        "bounced",
        "locked",
    ];
    let rows = answer.rows.iter().map(|r| {
        vec![
            r.domain.clone().unwrap_or_default(),
            r.identity.clone(),
            r.counts.messages.to_string(),
            r.counts.recipients.to_string(),
            r.counts.tempfailed.to_string(),
            r.counts.rejected.to_string(),
            r.counts.held.to_string(),
            r.counts.bounced.to_string(),
            yes_no(r.locked),
        ]
    });
    if csv {
        let mut out = header.join(",") + "\n";
        for row in rows {
            out.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        return Ok(out);
    }
    if answer.rows.is_empty() {
        return Ok(format!("no mail in the last {}h\n", answer.hours));
    }
    let mut all = vec![header.map(str::to_uppercase).to_vec()];
    all.extend(rows);
    Ok(table(&all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbad\n";
        assert_eq!(parse_response(plain), Some((503, "bad\n".into())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, "abcde".into())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a@x"), "a@x");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
