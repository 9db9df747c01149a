// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! SMTP replies: configured templates filled in per decision, made safe for
//! the milter protocol.

use crate::config::{ReplySpec, format_duration};
use crate::policy::Trip;

/// A reply ready for the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: String,
    pub status: String,
    pub text: String,
}

impl Reply {
    /// Whether the reply is temporary (4xx).
    pub fn is_temporary(&self) -> bool {
        self.code.starts_with('4')
    }
}

/// Values for a template's `{placeholders}`.
#[derive(Clone, Debug, Default)]
pub struct Vars<'a> {
    pub identity: &'a str,
    pub trip: Option<&'a Trip>,
    pub limit: Option<u32>,
    pub header: Option<&'a str>,
}

/// Fills in a template. Unknown placeholders are left as written.
pub fn render(spec: &ReplySpec, vars: &Vars<'_>) -> Reply {
    let mut text = String::with_capacity(spec.text.len() + 32);
    let mut rest = spec.text.as_str();
    while let Some(start) = rest.find('{') {
        text.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            text.push_str(after);
            rest = "";
            break;
        };
        let name = &after[1..end];
        match value(name, vars) {
            Some(v) => text.push_str(&v),
            None => text.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    Reply {
        code: spec.code.clone(),
        status: spec.status.clone(),
        text: escape(&text),
    }
}

fn value(name: &str, vars: &Vars<'_>) -> Option<String> {
    let trip = vars.trip;
    Some(match name {
        "identity" => vars.identity.to_string(),
        "rule" => trip?.rule.clone(),
        "count" => trip?.usage.used.to_string(),
        "limit" => match (vars.limit, trip) {
            (Some(limit), _) => limit.to_string(),
            (None, Some(t)) => t.usage.limit.to_string(),
            (None, None) => return None,
        },
        "window" => format_duration(trip?.rate.window),
        "retry" => match trip?.retry_in {
            Some(d) => format_duration(d),
            None => "a later message with fewer recipients".to_string(),
        },
        "header" => vars.header?.to_string(),
        _ => return None,
    })
}

/// Makes text safe as milter reply text: `%` doubled (libmilter treats it as
/// a format character), control characters (CR and LF included) replaced,
/// and the length bounded well below the protocol's 980 bytes per line.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if out.len() >= 900 {
            out.push_str("...");
            break;
        }
        match c {
            '%' => out.push_str("%%"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Counted, Scope};
    use crate::policy::limiter::Usage;
    use std::time::Duration;

    fn trip() -> Trip {
        Trip {
            rule: "per-hour".into(),
            action: Action::Tempfail,
            counted: Counted::Messages,
            scope: Scope::Identity,
            key: "alice@example.com".into(),
            rate: "500/1h".parse().unwrap(),
            usage: Usage {
                used: 500,
                limit: 500,
                reset_in: Duration::from_secs(3600),
            },
            retry_in: Some(Duration::from_secs(720)),
            requested: 1,
            dry_run: false,
        }
    }

    #[test]
    fn fills_placeholders() {
        let spec = ReplySpec::new(
            "451",
            "4.7.1",
            "Rate limit \"{rule}\" exceeded for {identity}, retry in {retry} ({count}/{limit} per {window}) {unknown}",
        );
        let t = trip();
        let r = render(
            &spec,
            &Vars {
                identity: "alice@example.com",
                trip: Some(&t),
                ..Vars::default()
            },
        );
        assert_eq!(
            r.text,
            "Rate limit \"per-hour\" exceeded for alice@example.com, retry in 12m (500/500 per 1h) {unknown}"
        );
        assert!(r.is_temporary());
    }

    #[test]
    fn escapes_percent_and_control_characters() {
        let spec = ReplySpec::new("550", "5.7.1", "{identity} is 100% locked {");
        let r = render(
            &spec,
            &Vars {
                identity: "evil\r\n250 ok%s",
                ..Vars::default()
            },
        );
        assert_eq!(r.text, "evil??250 ok%%s is 100%% locked {");
        let long = escape(&"x".repeat(5000));
        assert!(long.len() < 980);
    }
}
