// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! A minimal blocking SMTP client for the live tests: one command at a time,
//! every reply returned as a [`Reply`] so that tests can assert the code,
//! enhanced status and text of each step (4xx/5xx per recipient, at end of
//! DATA, ...). [`send_message`] plays a whole transaction and reports at which
//! [`Stage`] it was refused, if it was.
//!
//! The source address of the connection can be chosen (127.0.0.1 or
//! 127.0.0.2): on Linux the whole of 127.0.0.0/8 is local, and the private
//! Postfix trusts only 127.0.0.2 as the upstream MTA (see `postfix.rs`).

#![allow(dead_code)] // harness API: not every helper is used by every test

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to wait for each reply. Generous: a milter may legitimately
/// take a while (Postfix's own milter timeouts are in the tens of seconds).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest reply line accepted from a server.
const MAX_LINE: usize = 64 * 1024;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 1000;

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 enhanced status code at the start of the first line's
    /// text, such as `5.7.1`, when there is one.
    pub enhanced: Option<String>,
    /// The text of each line, after the code and separator, without the
    /// enhanced status code of the first line.
    pub lines: Vec<String>,
}

impl Reply {
    /// All the lines of text, joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (such as 354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: the client should retry later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: refused for good.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The queue ID from Postfix's `250 2.0.0 Ok: queued as 4ABC12` reply.
    pub fn queue_id(&self) -> Option<String> {
        let text = self.text();
        let rest = &text[text.find("queued as ")? + "queued as ".len()..];
        let id: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        (!id.is_empty()).then_some(id)
    }

    /// Parses the lines of one reply (`250-a`, `250 b`, each without CRLF).
    pub fn parse(raw_lines: &[String]) -> io::Result<Reply> {
        let mut code = None;
        let mut lines = Vec::with_capacity(raw_lines.len());
        for raw in raw_lines {
            let bytes = raw.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(invalid(format!("malformed SMTP reply line {raw:?}")));
            }
            let this: u16 = raw[..3]
                .parse()
                .map_err(|_| invalid(format!("bad reply code in {raw:?}")))?;
            if *code.get_or_insert(this) != this {
                return Err(invalid(format!("reply code changes within a reply at {raw:?}")));
            }
            lines.push(raw.get(4..).unwrap_or("").to_string());
        }
        let code = code.ok_or_else(|| invalid("empty SMTP reply".to_string()))?;
        let mut enhanced = None;
        if let Some(first) = lines.first_mut()
            && let Some((status, rest)) = split_enhanced(first, code)
        {
            enhanced = Some(status.to_string());
            *first = rest.to_string();
        }
        Ok(Reply { code, enhanced, lines })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = &self.enhanced {
            write!(f, " {status}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

/// Splits `5.7.1 text` into (`5.7.1`, `text`) when the status class matches
/// the reply code's class.
fn split_enhanced(text: &str, code: u16) -> Option<(&str, &str)> {
    let (status, rest) = match text.split_once(' ') {
        Some((status, rest)) => (status, rest),
        None => (text, ""),
    };
    let parts: Vec<&str> = status.split('.').collect();
    let well_formed = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    let class_matches = status.starts_with(char::from(b'0' + (code / 100) as u8));
    (well_formed && class_matches).then_some((status, rest))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Opens a TCP connection to `dest`, from `source` (port chosen by the
/// kernel) when given. std cannot bind before connecting, so a socket built
/// with tokio does it, then is handed back as a blocking std stream.
pub fn connect_from(source: Option<IpAddr>, dest: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&dest, timeout);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let stream = runtime.block_on(async {
        let socket = match source {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match tokio::time::timeout(timeout, socket.connect(dest)).await {
            Ok(connected) => connected?.into_std(),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting from {source} to {dest} timed out after {timeout:?}"),
            )),
        }
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A blocking SMTP client session.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    greeting: Reply,
    /// Every line sent and received, for failure messages.
    transcript: Vec<String>,
}

impl SmtpClient {
    /// Connects to 127.0.0.1:`port`, from `source` if given (for example
    /// [`crate::postfix::TRUSTED_UPSTREAM`]), and reads the greeting.
    pub fn connect(port: u16, source: Option<Ipv4Addr>) -> io::Result<SmtpClient> {
        let dest = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let stream = connect_from(source.map(IpAddr::V4), dest, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut client = SmtpClient {
            reader: BufReader::new(stream),
            writer,
            greeting: Reply {
                code: 0,
                enhanced: None,
                lines: Vec::new(),
            },
            transcript: Vec::new(),
        };
        client.greeting = client.read_reply()?;
        Ok(client)
    }

    /// Changes how long to wait for each reply.
    pub fn set_reply_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))
    }

    /// The server's greeting (220, or 421/554 when it refuses the session).
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The address this side of the connection is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Every line sent (`C: ...`) and received (`S: ...`) so far.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send_line(line)?;
        self.read_reply()
    }

    /// `EHLO name`.
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("EHLO {name}"))
    }

    /// `HELO name`.
    pub fn helo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("HELO {name}"))
    }

    /// `AUTH PLAIN` with the initial response: authorization identity empty,
    /// authentication identity `login`. 235 on success.
    pub fn auth_plain(&mut self, login: &str, password: &str) -> io::Result<Reply> {
        let token = base64_encode(format!("\0{login}\0{password}").as_bytes());
        self.send_raw(
            format!("AUTH PLAIN {token}\r\n").as_bytes(),
            "C: AUTH PLAIN <credentials>",
        )?;
        self.read_reply()
    }

    /// `MAIL FROM:<addr>` (`addr` may be empty for the null sender).
    pub fn mail_from(&mut self, addr: &str) -> io::Result<Reply> {
        self.command(&format!("MAIL FROM:<{addr}>"))
    }

    /// `RCPT TO:<addr>`.
    pub fn rcpt_to(&mut self, addr: &str) -> io::Result<Reply> {
        self.command(&format!("RCPT TO:<{addr}>"))
    }

    /// `DATA`; returns its reply (354 to go on).
    pub fn data_start(&mut self) -> io::Result<Reply> {
        self.command("DATA")
    }

    /// Sends the message content (headers, blank line, body), normalising
    /// line ends to CRLF and dot-stuffing, then the terminating `.`, and
    /// returns the final reply. Call after a 354 from [`Self::data_start`].
    pub fn data_content(&mut self, content: &str) -> io::Result<Reply> {
        let wire = dot_stuff(content);
        self.send_raw(&wire, &format!("C: <{} bytes of message content>", wire.len()))?;
        self.send_line(".")?;
        self.read_reply()
    }

    /// `DATA`, then the content if the server said 354: (DATA reply, final
    /// reply if the content was sent).
    pub fn data(&mut self, content: &str) -> io::Result<(Reply, Option<Reply>)> {
        let go = self.data_start()?;
        if go.code != 354 {
            return Ok((go, None));
        }
        let done = self.data_content(content)?;
        Ok((go, Some(done)))
    }

    /// `RSET`.
    pub fn rset(&mut self) -> io::Result<Reply> {
        self.command("RSET")
    }

    /// `NOOP`.
    pub fn noop(&mut self) -> io::Result<Reply> {
        self.command("NOOP")
    }

    /// `QUIT`, then closes the connection.
    pub fn quit(mut self) -> io::Result<Reply> {
        let reply = self.command("QUIT")?;
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        Ok(reply)
    }

    fn send_line(&mut self, line: &str) -> io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes(), &format!("C: {line}"))
    }

    fn send_raw(&mut self, bytes: &[u8], transcript: &str) -> io::Result<()> {
        self.transcript.push(transcript.to_string());
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut raw_lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("server closed the connection; transcript:\n{}", self.transcript()),
                ));
            }
            if buf.last() != Some(&b'\n') {
                return Err(invalid(format!(
                    "reply line too long or cut short: {:?}",
                    String::from_utf8_lossy(&buf)
                )));
            }
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
            self.transcript.push(format!("S: {line}"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            raw_lines.push(line);
            if last {
                return Reply::parse(&raw_lines);
            }
            if raw_lines.len() >= MAX_REPLY_LINES {
                return Err(invalid("reply has too many lines".to_string()));
            }
        }
    }
}

/// CRLF line ends and dot-stuffing, for the content of DATA. A final line
/// end is added when missing.
pub fn dot_stuff(content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    if content.is_empty() {
        return out;
    }
    for line in content.strip_suffix('\n').unwrap_or(content).split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Standard base64 with padding (RFC 4648), for AUTH PLAIN.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Builds message content: each header as `Name: value`, a blank line, then
/// the body, with CRLF line ends.
pub fn build_message(headers: &[(&str, &str)], body: &str) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    for line in body.strip_suffix('\n').unwrap_or(body).split('\n') {
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push_str("\r\n");
    }
    out
}

/// One message to send with [`send_message`].
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Source address to connect from; `None` lets the kernel choose
    /// (127.0.0.1).
    pub source: Option<Ipv4Addr>,
    /// EHLO name.
    pub helo: String,
    /// SASL login and password for AUTH PLAIN, if any.
    pub auth: Option<(String, String)>,
    /// Envelope sender.
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpt_to: Vec<String>,
    /// Headers, blank line and body (see [`build_message`]).
    pub content: String,
}

impl Envelope {
    /// A message from `mail_from` to `rcpt_to` on `port`, with a small
    /// default content (From, To, Subject, Message-ID headers and a body).
    pub fn new(port: u16, mail_from: &str, rcpt_to: &[&str]) -> Envelope {
        let to = rcpt_to.join(", ");
        let content = build_message(
            &[
                ("From", &format!("<{mail_from}>")),
                ("To", &to),
                ("Subject", "egress-milter live test"),
                (
                    "Message-ID",
                    &format!("<{}.{}@client.test>", std::process::id(), unique()),
                ),
            ],
            "Hello from the live-MTA test suite.\n",
        );
        Envelope {
            port,
            source: None,
            helo: "client.test".to_string(),
            auth: None,
            mail_from: mail_from.to_string(),
            rcpt_to: rcpt_to.iter().map(|r| r.to_string()).collect(),
            content,
        }
    }

    /// Connects from this source address.
    pub fn source(mut self, source: Ipv4Addr) -> Envelope {
        self.source = Some(source);
        self
    }

    /// Authenticates with AUTH PLAIN before MAIL FROM.
    pub fn auth(mut self, login: &str, password: &str) -> Envelope {
        self.auth = Some((login.to_string(), password.to_string()));
        self
    }

    /// Replaces the content.
    pub fn content(mut self, content: &str) -> Envelope {
        self.content = content.to_string();
        self
    }
}

/// A counter to make default Message-IDs unique within the process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The steps of a transaction, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The greeting.
    Connect,
    /// EHLO.
    Ehlo,
    /// AUTH PLAIN.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO (refused there when every recipient was refused).
    RcptTo,
    /// The DATA command itself.
    Data,
    /// The final reply, after the content.
    DataEnd,
}

/// What happened to a message sent with [`send_message`].
#[derive(Clone, Debug)]
pub struct SendOutcome {
    /// The server's greeting.
    pub greeting: Reply,
    /// Reply to EHLO, if sent.
    pub ehlo: Option<Reply>,
    /// Reply to AUTH, if sent.
    pub auth: Option<Reply>,
    /// Reply to MAIL FROM, if sent.
    pub mail_from: Option<Reply>,
    /// Each recipient with the reply to its RCPT TO, in order.
    pub rcpt_to: Vec<(String, Reply)>,
    /// Reply to DATA, if sent.
    pub data: Option<Reply>,
    /// Final reply after the content, if sent.
    pub data_end: Option<Reply>,
    /// Where the transaction stopped and the reply that stopped it; `None`
    /// when the message was accepted.
    pub refused: Option<(Stage, Reply)>,
    /// Every line sent and received.
    pub transcript: String,
}

impl SendOutcome {
    /// The message was accepted (2xx at the end of DATA).
    pub fn accepted(&self) -> bool {
        self.refused.is_none() && self.data_end.as_ref().is_some_and(Reply::is_positive)
    }

    /// The stage at which it was refused.
    pub fn refused_at(&self) -> Option<Stage> {
        self.refused.as_ref().map(|(stage, _)| *stage)
    }

    /// The reply that refused it.
    pub fn refusal(&self) -> Option<&Reply> {
        self.refused.as_ref().map(|(_, reply)| reply)
    }

    /// The queue ID Postfix gave the accepted message.
    pub fn queue_id(&self) -> Option<String> {
        self.data_end.as_ref().and_then(Reply::queue_id)
    }

    /// The recipients whose RCPT TO got a 2xx.
    pub fn accepted_recipients(&self) -> Vec<&str> {
        self.rcpt_to
            .iter()
            .filter(|(_, r)| r.is_positive())
            .map(|(a, _)| a.as_str())
            .collect()
    }

    /// The reply to RCPT TO for `addr`.
    pub fn rcpt_reply(&self, addr: &str) -> Option<&Reply> {
        self.rcpt_to.iter().find(|(a, _)| a == addr).map(|(_, r)| r)
    }
}

/// Plays one whole transaction: connect, EHLO, AUTH (if asked), MAIL FROM,
/// each RCPT TO, DATA and content (if any recipient was accepted), QUIT.
/// Stops at the first refusal (every recipient refused counts as a refusal
/// at [`Stage::RcptTo`], with the last refusal's reply). An `Err` means the
/// conversation itself failed (connection refused or closed, timeout).
pub fn send_message(envelope: &Envelope) -> io::Result<SendOutcome> {
    let mut client = SmtpClient::connect(envelope.port, envelope.source)?;
    let mut outcome = SendOutcome {
        greeting: client.greeting().clone(),
        ehlo: None,
        auth: None,
        mail_from: None,
        rcpt_to: Vec::new(),
        data: None,
        data_end: None,
        refused: None,
        transcript: String::new(),
    };
    let result = play(&mut client, envelope, &mut outcome);
    outcome.transcript = client.transcript();
    result?;
    let _ = client.quit();
    Ok(outcome)
}

fn play(client: &mut SmtpClient, envelope: &Envelope, outcome: &mut SendOutcome) -> io::Result<()> {
    if !outcome.greeting.is_positive() {
        outcome.refused = Some((Stage::Connect, outcome.greeting.clone()));
        return Ok(());
    }
    let ehlo = client.ehlo(&envelope.helo)?;
    outcome.ehlo = Some(ehlo.clone());
    if !ehlo.is_positive() {
        outcome.refused = Some((Stage::Ehlo, ehlo));
        return Ok(());
    }
    if let Some((login, password)) = &envelope.auth {
        let auth = client.auth_plain(login, password)?;
        outcome.auth = Some(auth.clone());
        if !auth.is_positive() {
            outcome.refused = Some((Stage::Auth, auth));
            return Ok(());
        }
    }
    play_transaction(client, envelope, outcome)
}

/// MAIL FROM, each RCPT TO, DATA and content (if any recipient was accepted).
fn play_transaction(client: &mut SmtpClient, envelope: &Envelope, outcome: &mut SendOutcome) -> io::Result<()> {
    let mail = client.mail_from(&envelope.mail_from)?;
    outcome.mail_from = Some(mail.clone());
    if !mail.is_positive() {
        outcome.refused = Some((Stage::MailFrom, mail));
        return Ok(());
    }
    let mut last_refusal = None;
    for rcpt in &envelope.rcpt_to {
        let reply = client.rcpt_to(rcpt)?;
        if !reply.is_positive() {
            last_refusal = Some(reply.clone());
        }
        outcome.rcpt_to.push((rcpt.clone(), reply));
    }
    if outcome.accepted_recipients().is_empty() {
        let reply = last_refusal.ok_or_else(|| invalid("an envelope needs at least one recipient".to_string()))?;
        outcome.refused = Some((Stage::RcptTo, reply));
        return Ok(());
    }
    let (go, done) = client.data(&envelope.content)?;
    outcome.data = Some(go.clone());
    let Some(done) = done else {
        outcome.refused = Some((Stage::Data, go));
        return Ok(());
    };
    outcome.data_end = Some(done.clone());
    if !done.is_positive() {
        outcome.refused = Some((Stage::DataEnd, done));
    }
    Ok(())
}

/// Opens a session for [`send_transaction`]: connects to `envelope.port`
/// (from `envelope.source`), says EHLO and authenticates if
/// `envelope.auth` is set. An error unless every step got a 2xx.
pub fn open_session(envelope: &Envelope) -> io::Result<SmtpClient> {
    let mut client = SmtpClient::connect(envelope.port, envelope.source)?;
    let refused = |client: &SmtpClient, what: &str, reply: &Reply| {
        io::Error::other(format!("{what} refused: {reply}\n{}", client.transcript()))
    };
    if !client.greeting().is_positive() {
        let greeting = client.greeting().clone();
        return Err(refused(&client, "session", &greeting));
    }
    let ehlo = client.ehlo(&envelope.helo)?;
    if !ehlo.is_positive() {
        return Err(refused(&client, "EHLO", &ehlo));
    }
    if let Some((login, password)) = &envelope.auth {
        let auth = client.auth_plain(login, password)?;
        if !auth.is_positive() {
            return Err(refused(&client, "AUTH", &auth));
        }
    }
    Ok(client)
}

/// Plays one more transaction (MAIL FROM to the end of DATA) on a session
/// opened with [`open_session`], as a client sending many messages over one
/// connection does. `envelope.port`, `source`, `helo` and `auth` are not
/// used here. After a refusal before DATA it sends RSET, so the session can
/// go on. The outcome's `greeting` is the session's, `ehlo`/`auth` are
/// `None`, and its transcript covers this transaction only.
pub fn send_transaction(client: &mut SmtpClient, envelope: &Envelope) -> io::Result<SendOutcome> {
    let first_line = client.transcript.len();
    let mut outcome = SendOutcome {
        greeting: client.greeting().clone(),
        ehlo: None,
        auth: None,
        mail_from: None,
        rcpt_to: Vec::new(),
        data: None,
        data_end: None,
        refused: None,
        transcript: String::new(),
    };
    let result = play_transaction(client, envelope, &mut outcome);
    if result.is_ok()
        && matches!(
            outcome.refused_at(),
            Some(Stage::MailFrom | Stage::RcptTo | Stage::Data)
        )
    {
        client.rset()?;
    }
    outcome.transcript = client.transcript[first_line..].join("\n");
    result?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(
            base64_encode(b"\0alice@example.com\0secret"),
            "AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA=="
        );
    }

    #[test]
    fn replies_parse_with_enhanced_status() {
        let reply = Reply::parse(&["554 5.7.1 <b@x.test>: Relay access denied".to_string()]).expect("parse");
        assert_eq!(reply.code, 554);
        assert_eq!(reply.enhanced.as_deref(), Some("5.7.1"));
        assert_eq!(reply.text(), "<b@x.test>: Relay access denied");
        assert!(reply.is_permanent());

        let reply = Reply::parse(&["250-mta.test".to_string(), "250 PIPELINING".to_string()]).expect("parse");
        assert_eq!((reply.code, reply.enhanced.clone()), (250, None));
        assert_eq!(reply.lines, ["mta.test", "PIPELINING"]);

        let reply = Reply::parse(&["250 2.0.0 Ok: queued as 4Fx9Zq1kQz".to_string()]).expect("parse");
        assert_eq!(reply.queue_id().as_deref(), Some("4Fx9Zq1kQz"));

        // A status whose class differs from the code is just text.
        let reply = Reply::parse(&["451 5.7.1 odd".to_string()]).expect("parse");
        assert_eq!(reply.enhanced, None);

        assert!(Reply::parse(&["25 short".to_string()]).is_err());
        assert!(Reply::parse(&["250-a".to_string(), "251 b".to_string()]).is_err());
    }

    #[test]
    fn content_is_dot_stuffed_with_crlf() {
        assert_eq!(dot_stuff("a\n.b\r\n..c\nd"), b"a\r\n..b\r\n...c\r\nd\r\n");
        assert_eq!(dot_stuff("."), b"..\r\n");
        assert_eq!(dot_stuff(""), b"");
    }
}
