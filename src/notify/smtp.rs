// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A minimal SMTP client for lock reports: EHLO (or HELO), MAIL, RCPT, DATA
//! with dot-stuffing, QUIT; multi-line replies; a timeout on every step.
//! Plain SMTP to a relay the postmaster runs, no TLS, no authentication.

use crate::config::notify::SmtpRelay;
use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Longest reply line read (RFC 5321 allows 512 octets; be lenient).
const MAX_LINE: u64 = 4096;
/// Most lines in one multi-line reply.
const MAX_LINES: usize = 128;

/// Why a report was not handed over.
#[derive(Debug)]
pub enum SmtpError {
    /// Could not connect, or the connection failed.
    Io { step: &'static str, error: std::io::Error },
    /// No answer within the timeout.
    Timeout { step: &'static str },
    /// The relay refused, or did not speak SMTP.
    Refused { step: &'static str, reply: Reply },
}

impl SmtpError {
    /// Whether trying again cannot help (a 5xx answer).
    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::Refused { reply, .. } if reply.code >= 500)
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpError::Io { step, error } => write!(f, "{step}: {error}"),
            SmtpError::Timeout { step } => write!(f, "{step}: no answer within notify.smtp_timeout"),
            SmtpError::Refused { step, reply } => write!(f, "{step}: the relay answered \"{reply}\""),
        }
    }
}

impl std::error::Error for SmtpError {}

/// A server reply: its code and its lines' text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Connection {
    async fn reply(&mut self, step: &'static str) -> Result<Reply, SmtpError> {
        let read = async {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = (&mut self.reader)
                    .take(MAX_LINE)
                    .read_line(&mut line)
                    .await
                    .map_err(|error| SmtpError::Io { step, error })?;
                if n == 0 {
                    return Err(SmtpError::Io {
                        step,
                        error: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                let line = line.trim_end_matches(['\r', '\n']);
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (200..600).contains(c));
                let Some(code) = code else {
                    return Err(SmtpError::Refused {
                        step,
                        reply: Reply {
                            code: 0,
                            lines: vec![format!("not an SMTP reply: {line:?}")],
                        },
                    });
                };
                lines.push(line.get(4..).unwrap_or("").to_string());
                let more = line.as_bytes().get(3) == Some(&b'-');
                if !more || lines.len() >= MAX_LINES {
                    return Ok(Reply { code, lines });
                }
            }
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| SmtpError::Timeout { step })?
    }

    async fn send(&mut self, step: &'static str, data: &[u8]) -> Result<(), SmtpError> {
        let write = async {
            self.writer.write_all(data).await?;
            self.writer.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SmtpError::Io { step, error }),
            Err(_) => Err(SmtpError::Timeout { step }),
        }
    }

    /// Sends a command and reads its reply.
    async fn command(&mut self, step: &'static str, line: &str) -> Result<Reply, SmtpError> {
        self.send(step, format!("{line}\r\n").as_bytes()).await?;
        self.reply(step).await
    }

    /// A command whose reply must be 2xx (or `want`).
    async fn expect(&mut self, step: &'static str, line: &str, want: u16) -> Result<Reply, SmtpError> {
        let reply = self.command(step, line).await?;
        if reply.code / 100 == want / 100 {
            Ok(reply)
        } else {
            Err(SmtpError::Refused { step, reply })
        }
    }
}

/// Hands `message` (headers and body) to the relay for `to`. Returns the
/// recipients the relay refused, with its reply, if others were accepted.
pub async fn send(
    relay: &SmtpRelay,
    timeout: Duration,
    helo: &str,
    from: &str,
    to: &[String],
    message: &str,
) -> Result<Vec<(String, Reply)>, SmtpError> {
    let connect = TcpStream::connect((relay.host.as_str(), relay.port));
    let stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => return Err(SmtpError::Io { step: "connect", error }),
        Err(_) => return Err(SmtpError::Timeout { step: "connect" }),
    };
    let (read, write) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(read),
        writer: write,
        timeout,
    };
    let greeting = conn.reply("greeting").await?;
    if greeting.code != 220 {
        return Err(SmtpError::Refused {
            step: "greeting",
            reply: greeting,
        });
    }
    let ehlo = conn.command("EHLO", &format!("EHLO {helo}")).await?;
    let eight_bit = if ehlo.code == 250 {
        ehlo.lines.iter().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("8BITMIME"))
        })
    } else {
        conn.expect("HELO", &format!("HELO {helo}"), 250).await?;
        false
    };
    let body_param = if eight_bit && !message.is_ascii() {
        " BODY=8BITMIME"
    } else {
        ""
    };
    conn.expect("MAIL FROM", &format!("MAIL FROM:<{from}>{body_param}"), 250)
        .await?;
    let mut refused = Vec::new();
    let mut last_refusal = None;
    for rcpt in to {
        let reply = conn.command("RCPT TO", &format!("RCPT TO:<{rcpt}>")).await?;
        if reply.code / 100 != 2 {
            last_refusal = Some(reply.clone());
            refused.push((rcpt.clone(), reply));
        }
    }
    if refused.len() == to.len() {
        let _ = conn.command("QUIT", "QUIT").await;
        return Err(SmtpError::Refused {
            step: "RCPT TO",
            reply: last_refusal.unwrap_or(Reply {
                code: 554,
                lines: vec!["no recipients".into()],
            }),
        });
    }
    conn.expect("DATA", "DATA", 354).await?;
    conn.send("message", &dot_stuff(message)).await?;
    conn.expect("end of data", ".", 250).await?;
    let _ = conn.command("QUIT", "QUIT").await;
    Ok(refused)
}

/// The message as sent after DATA (without the final `.` line): CRLF line
/// ends, and a leading `.` doubled.
pub fn dot_stuff(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let body = message.strip_suffix('\n').unwrap_or(message);
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn dot_stuffing_and_line_ends() {
        assert_eq!(dot_stuff("a\r\n.b\n..c\r\nd"), b"a\r\n..b\r\n...c\r\nd\r\n");
        assert_eq!(dot_stuff("x\r\n"), b"x\r\n");
        assert_eq!(dot_stuff(".\r\n"), b"..\r\n");
    }

    /// A scripted server: answers each command with the next canned reply
    /// and returns what it received.
    async fn server(replies: Vec<&'static str>) -> (SmtpRelay, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut seen = String::new();
            let mut replies = replies.into_iter();
            w.write_all(replies.next().unwrap().as_bytes()).await.unwrap();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                seen.push_str(&line);
                if in_data && line != ".\r\n" {
                    continue;
                }
                in_data = false;
                let Some(reply) = replies.next() else { break };
                w.write_all(reply.as_bytes()).await.unwrap();
                if reply.starts_with("354") {
                    in_data = true;
                }
            }
            seen
        });
        (
            SmtpRelay {
                host: "127.0.0.1".into(),
                port,
            },
            handle,
        )
    }

    #[tokio::test]
    async fn a_conversation_with_multiline_replies_and_a_refused_recipient() {
        let (relay, seen) = server(vec![
            "220-relay.example ESMTP\r\n220 welcome\r\n",
            "250-relay.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "250 2.1.0 ok\r\n",
            "250 2.1.5 ok\r\n",
            "550 5.1.1 no such user\r\n",
            "354 go ahead\r\n",
            "250 2.0.0 queued\r\n",
            "221 bye\r\n",
        ])
        .await;
        let to = ["pm@example.com".to_string(), "nobody@example.com".to_string()];
        let refused = send(
            &relay,
            Duration::from_secs(5),
            "mx1",
            "e@example.com",
            &to,
            "Subject: ö\r\n\r\n.hi\r\n",
        )
        .await
        .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "nobody@example.com");
        assert_eq!(refused[0].1.code, 550);
        assert_eq!(
            seen.await.unwrap(),
            "EHLO mx1\r\nMAIL FROM:<e@example.com> BODY=8BITMIME\r\nRCPT TO:<pm@example.com>\r\n\
             RCPT TO:<nobody@example.com>\r\nDATA\r\nSubject: ö\r\n\r\n..hi\r\n.\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn helo_when_ehlo_is_refused_and_errors_are_classified() {
        let (relay, seen) = server(vec![
            "220 old relay\r\n",
            "502 what\r\n",
            "250 hello\r\n",
            "451 4.3.0 try later\r\n",
        ])
        .await;
        let to = ["pm@example.com".to_string()];
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, "x\r\n")
            .await
            .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(e.to_string(), "MAIL FROM: the relay answered \"451 4.3.0 try later\"");
        assert_eq!(
            seen.await.unwrap(),
            "EHLO mx1\r\nHELO mx1\r\nMAIL FROM:<e@example.com>\r\n"
        );
        let (relay, _seen) = server(vec!["554 go away\r\n"]).await;
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, "x\r\n")
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }

    #[tokio::test]
    async fn a_silent_relay_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = SmtpRelay {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // Keep the connection open, say nothing.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let to = ["pm@example.com".to_string()];
        let e = send(&relay, Duration::from_millis(200), "mx1", "e@example.com", &to, "x\r\n")
            .await
            .unwrap_err();
        assert!(matches!(e, SmtpError::Timeout { step: "greeting" }), "{e}");
        hold.abort();
    }
}
