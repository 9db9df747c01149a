// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Hands a composed report to the relay, through lettre's SMTP client:
//! EHLO, MAIL (with `BODY=8BITMIME` when the message needs it), one RCPT per
//! recipient, DATA (lettre dot-stuffs), QUIT; a timeout on every step.
//! Plain SMTP to a relay the postmaster runs, no TLS, no authentication.
//!
//! lettre's own `AsyncSmtpTransport::send` gives up on the first refused
//! recipient and has no timeout on replies; the connection it is built on
//! is driven here step by step so that a refused recipient does not keep
//! the report from the others, and a relay that stops answering costs at
//! most `notify.smtp_timeout` per step.

use crate::config::notify::SmtpRelay;
use lettre::Address;
use lettre::transport::smtp::Error as LettreError;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a report was not handed over.
#[derive(Debug)]
pub enum SmtpError {
    /// Could not connect.
    Io { step: &'static str, error: std::io::Error },
    /// The connection failed, or the relay refused.
    Smtp { step: &'static str, error: LettreError },
    /// No answer within the timeout.
    Timeout { step: &'static str },
    /// An address lettre does not accept in an SMTP envelope.
    Address { address: String, why: String },
}

impl SmtpError {
    /// Whether trying again cannot help: a 5xx answer, or a message or
    /// address the client cannot send at all.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpError::Smtp { error, .. } => error.is_permanent() || error.is_client(),
            SmtpError::Io { .. } | SmtpError::Timeout { .. } => false,
            SmtpError::Address { .. } => true,
        }
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpError::Io { step, error } => write!(f, "{step}: {error}"),
            SmtpError::Smtp { step, error } => write!(f, "{step}: {error}"),
            SmtpError::Timeout { step } => write!(f, "{step}: no answer within notify.smtp_timeout"),
            SmtpError::Address { address, why } => {
                write!(f, "the address \"{address}\" cannot be used in SMTP: {why}")
            }
        }
    }
}

impl std::error::Error for SmtpError {}

/// One step, bounded by `timeout`.
async fn step<T>(
    step: &'static str,
    timeout: Duration,
    work: impl Future<Output = Result<T, LettreError>>,
) -> Result<T, SmtpError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => Err(SmtpError::Smtp { step, error }),
        Err(_) => Err(SmtpError::Timeout { step }),
    }
}

fn address(a: &str) -> Result<Address, SmtpError> {
    a.parse()
        .map_err(|e: lettre::address::AddressError| SmtpError::Address {
            address: a.to_string(),
            why: e.to_string(),
        })
}

/// Hands `message` (headers and body, CRLF line ends) to the relay for
/// `to`. Returns the recipients the relay refused, with its reply, if
/// others were accepted.
pub async fn send(
    relay: &SmtpRelay,
    timeout: Duration,
    helo: &str,
    from: &str,
    to: &[String],
    message: &[u8],
) -> Result<Vec<(String, String)>, SmtpError> {
    let sender = address(from)?;
    let recipients = to
        .iter()
        .map(|r| address(r).map(|a| (r, a)))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((relay.host.as_str(), relay.port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => return Err(SmtpError::Io { step: "connect", error }),
        Err(_) => return Err(SmtpError::Timeout { step: "connect" }),
    };
    let hello = ClientId::Domain(helo.to_string());
    let mut conn = step(
        "greeting and EHLO",
        timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello),
    )
    .await?;
    let result = transaction(&mut conn, timeout, sender, &recipients, message).await;
    // QUIT, unless a failed command already did, and close.
    let _ = tokio::time::timeout(timeout, conn.abort()).await;
    result
}

async fn transaction(
    conn: &mut AsyncSmtpConnection,
    timeout: Duration,
    sender: Address,
    recipients: &[(&String, Address)],
    message: &[u8],
) -> Result<Vec<(String, String)>, SmtpError> {
    let mut params = Vec::new();
    if !message.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(SmtpError::Address {
                address: sender.to_string(),
                why: "the report has 8-bit text and the relay does not offer 8BITMIME".into(),
            });
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    step("MAIL FROM", timeout, conn.command(Mail::new(Some(sender), params))).await?;
    let mut refused = Vec::new();
    let mut last_refusal = None;
    for (text, rcpt) in recipients {
        match step("RCPT TO", timeout, conn.command(Rcpt::new(rcpt.clone(), vec![]))).await {
            Ok(_) => {}
            Err(SmtpError::Smtp { step, error }) if error.status().is_some() => {
                refused.push(((*text).clone(), error.to_string()));
                last_refusal = Some(SmtpError::Smtp { step, error });
            }
            Err(e) => return Err(e),
        }
    }
    if refused.len() == recipients.len() {
        return Err(last_refusal.unwrap_or(SmtpError::Address {
            address: String::new(),
            why: "no recipients".into(),
        }));
    }
    step("DATA", timeout, conn.command(Data)).await?;
    // lettre ends the data with CRLF "." CRLF itself.
    let message = message.strip_suffix(b"\r\n").unwrap_or(message);
    step("end of data", timeout, conn.message(message)).await?;
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

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
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
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
            "mx1.example",
            "e@example.com",
            &to,
            "Subject: ö\r\n\r\n.hi\r\n".as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "nobody@example.com");
        assert!(
            refused[0].1.contains("550") && refused[0].1.contains("no such user"),
            "{refused:?}"
        );
        assert_eq!(
            seen.await.unwrap(),
            "EHLO mx1.example\r\nMAIL FROM:<e@example.com> BODY=8BITMIME\r\nRCPT TO:<pm@example.com>\r\n\
             RCPT TO:<nobody@example.com>\r\nDATA\r\nSubject: ö\r\n\r\n..hi\r\n.\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn errors_are_classified() {
        let (relay, seen) = server(vec!["220 relay\r\n", "250 hello\r\n", "451 4.3.0 try later\r\n"]).await;
        let to = ["pm@example.com".to_string()];
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, b"x\r\n")
            .await
            .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(e.to_string(), "MAIL FROM: transient error (451): 4.3.0 try later");
        assert!(
            seen.await
                .unwrap()
                .starts_with("EHLO mx1\r\nMAIL FROM:<e@example.com>\r\n")
        );
        let (relay, _seen) = server(vec!["220 relay\r\n", "554 5.7.1 go away\r\n"]).await;
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, b"x\r\n")
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        // Every recipient refused: the last refusal, permanent.
        let (relay, _seen) = server(vec![
            "220 relay\r\n",
            "250 hello\r\n",
            "250 ok\r\n",
            "550 5.1.1 no such user\r\n",
        ])
        .await;
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, b"x\r\n")
            .await
            .unwrap_err();
        assert!(
            e.is_permanent() && e.to_string().starts_with("RCPT TO: permanent error (550)"),
            "{e}"
        );
        // A relay that is not there.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = SmtpRelay {
            host: "127.0.0.1".into(),
            port: closed.local_addr().unwrap().port(),
        };
        drop(closed);
        let e = send(&relay, Duration::from_secs(5), "mx1", "e@example.com", &to, b"x\r\n")
            .await
            .unwrap_err();
        assert!(!e.is_permanent() && e.to_string().starts_with("connect: "), "{e}");
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
        let started = std::time::Instant::now();
        let e = send(
            &relay,
            Duration::from_millis(200),
            "mx1",
            "e@example.com",
            &to,
            b"x\r\n",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                SmtpError::Timeout {
                    step: "greeting and EHLO"
                }
            ),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
