// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The SMTP sink: where the private Postfix relays everything it delivers
//! (its `relayhost`). It accepts every message (250) and records each one in
//! memory: envelope sender, recipients and content. Tests ask for
//! [`SmtpSink::messages`] or wait with [`SmtpSink::wait_for_count`].
//!
//! It plays the internet's mailboxes too: a recipient that does not exist
//! (by default any whose local part starts with `unknown`, see
//! [`UnknownUsers`]) is refused at RCPT with
//! `550 5.1.1 <addr>: Recipient address rejected: User unknown`, as a real
//! destination refuses a stale address. Postfix then bounces that recipient
//! and sends a delivery status notification (a DSN, from `<>`) to the
//! message's sender, which comes back to the sink like any other mail.
//!
//! It speaks the ESMTP that Postfix's smtp client uses: EHLO (advertising
//! PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES), HELO, MAIL
//! with parameters, RCPT, DATA with dot-unstuffing, RSET, NOOP, VRFY, QUIT.
//! Commands are read line by line and answered in order, so pipelined
//! commands work. One thread per connection, at most [`MAX_CONNECTIONS`] at
//! a time (421 beyond that); each connection is closed after
//! [`IDLE_TIMEOUT`] without a command. Dropping the sink stops the accept
//! thread and every connection thread.

#![allow(dead_code)] // harness API: not every helper is used by every test

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection with no command for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest message accepted (also advertised as SIZE).
pub const MAX_MESSAGE: usize = 50 * 1024 * 1024;
/// Longest command line accepted.
const MAX_COMMAND_LINE: usize = 4096;
/// How often blocked reads wake up to check for shutdown.
const POLL: Duration = Duration::from_millis(200);
/// The name the sink gives itself.
pub const SINK_HOSTNAME: &str = "sink.egress-test.invalid";
/// The local-part prefix of the recipients the sink refuses by default.
pub const UNKNOWN_PREFIX: &str = "unknown";

/// The recipients the sink has no mailbox for: refused at RCPT with
/// `550 5.1.1 ... User unknown`. A recipient is unknown when its local part
/// starts with one of the prefixes, or when it is one of the addresses
/// (both compared without regard to case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownUsers {
    local_part_prefixes: Vec<String>,
    addresses: Vec<String>,
}

impl Default for UnknownUsers {
    /// Every local part starting with [`UNKNOWN_PREFIX`].
    fn default() -> Self {
        UnknownUsers::none().local_part_prefix(UNKNOWN_PREFIX)
    }
}

impl UnknownUsers {
    /// Every recipient exists.
    pub fn none() -> UnknownUsers {
        UnknownUsers {
            local_part_prefixes: Vec::new(),
            addresses: Vec::new(),
        }
    }

    /// Also refuses every local part starting with `prefix`.
    pub fn local_part_prefix(mut self, prefix: &str) -> UnknownUsers {
        self.local_part_prefixes.push(prefix.to_ascii_lowercase());
        self
    }

    /// Also refuses `address`.
    pub fn address(mut self, address: &str) -> UnknownUsers {
        self.addresses.push(address.to_ascii_lowercase());
        self
    }

    /// Whether the sink has no mailbox for `address`.
    pub fn contains(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        let local_part = address.rsplit_once('@').map_or(address.as_str(), |(local, _)| local);
        self.addresses.contains(&address)
            || self
                .local_part_prefixes
                .iter()
                .any(|p| local_part.starts_with(p.as_str()))
    }
}

/// A message the sink received.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Sequence number, from 1, in order of acceptance.
    pub seq: usize,
    /// Who sent it (Postfix's smtp client).
    pub peer: SocketAddr,
    /// The EHLO/HELO name.
    pub helo: String,
    /// Envelope sender, without angle brackets or parameters.
    pub mail_from: String,
    /// Envelope recipients, without angle brackets or parameters.
    pub rcpt_to: Vec<String>,
    /// The content as received, dot-unstuffed, with its CRLF line ends.
    pub data: Vec<u8>,
}

impl ReceivedMessage {
    /// The content as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The header section and the body, split at the first empty line.
    fn split(&self) -> (String, String) {
        let text = self.text();
        match text.find("\r\n\r\n") {
            Some(at) => (text[..at + 2].to_string(), text[at + 4..].to_string()),
            None => (text, String::new()),
        }
    }

    /// Every header as (name, unfolded value), in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        let (head, _) = self.split();
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = out.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                out.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        out
    }

    /// The values of every header called `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).into_iter().next()
    }

    /// The body (after the first empty line), CRLF line ends.
    pub fn body(&self) -> String {
        self.split().1
    }
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<ReceivedMessage>>,
    arrived: Condvar,
    stop: AtomicBool,
    active: AtomicUsize,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    /// Where each message is also written, if anywhere ([`SmtpSink::record_to`]).
    record_dir: Mutex<Option<PathBuf>>,
    /// Messages written there so far (file names never repeat).
    recorded: AtomicUsize,
    /// The recipients refused with 550 5.1.1.
    unknown_users: Mutex<UnknownUsers>,
    /// How many recipients were refused as unknown so far.
    refused_unknown: AtomicUsize,
}

impl Shared {
    /// Writes `message` to the record directory, if one is set, as
    /// `NNNN.eml`: two `X-Sink-Envelope-*` lines, then the content as
    /// received. A failure is reported, not fatal: the copy is for people.
    fn record(&self, message: &ReceivedMessage) {
        let dir = self.record_dir.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(dir) = dir else { return };
        let n = self.recorded.fetch_add(1, Ordering::SeqCst) + 1;
        let path = dir.join(format!("{n:04}.eml"));
        let mut file = Vec::with_capacity(message.data.len() + 256);
        file.extend_from_slice(
            format!(
                "X-Sink-Envelope-From: <{}>\r\nX-Sink-Envelope-To: {}\r\n",
                message.mail_from,
                message
                    .rcpt_to
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .as_bytes(),
        );
        file.extend_from_slice(&message.data);
        if let Err(err) = std::fs::write(&path, file) {
            eprintln!("smtp sink: cannot record a message in {}: {err}", path.display());
        }
    }

    fn is_unknown(&self, address: &str) -> bool {
        self.unknown_users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(address)
    }

    fn lock_messages(&self) -> MutexGuard<'_, Vec<ReceivedMessage>> {
        // A panicking handler thread cannot leave the list half-updated: it
        // only ever pushes whole messages.
        self.messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sink server. Listens on 127.0.0.1, on a port chosen by the kernel.
pub struct SmtpSink {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Starts listening and serving in background threads.
    pub fn start() -> io::Result<SmtpSink> {
        let (listener, port) = loop {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = listener.local_addr()?.port();
            if crate::egress::claim_port(port) {
                break (listener, port);
            }
        };
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("smtp-sink-{port}"))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(SmtpSink {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock_messages().clone()
    }

    /// How many messages were received so far.
    pub fn count(&self) -> usize {
        self.shared.lock_messages().len()
    }

    /// Waits until at least `n` messages were received or `timeout` passed;
    /// true if they were.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut messages = self.shared.lock_messages();
        while messages.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            messages = match self.shared.arrived.wait_timeout(messages, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// The messages received for `rcpt` (an envelope recipient).
    pub fn messages_to(&self, rcpt: &str) -> Vec<ReceivedMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .collect()
    }

    /// From now on also writes each message to `dir` (created if missing)
    /// as `0001.eml`, `0002.eml`, ...: the envelope in two
    /// `X-Sink-Envelope-From`/`X-Sink-Envelope-To` lines, then the content
    /// as received. For people watching a test, not for assertions.
    pub fn record_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        *self.shared.record_dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
        Ok(())
    }

    /// Forgets every message received so far.
    pub fn clear(&self) {
        self.shared.lock_messages().clear();
    }

    /// From now on refuses these recipients with `550 5.1.1` (instead of
    /// the default, [`UnknownUsers::default`]).
    pub fn set_unknown_users(&self, users: UnknownUsers) {
        *self.shared.unknown_users.lock().unwrap_or_else(|p| p.into_inner()) = users;
    }

    /// How many recipients were refused as unknown users so far.
    pub fn refused_unknown(&self) -> usize {
        self.shared.refused_unknown.load(Ordering::SeqCst)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)), POLL);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let handlers = std::mem::take(&mut *self.shared.handlers.lock().unwrap_or_else(|p| p.into_inner()));
        for handler in handlers {
            let _ = handler.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let mut handlers = shared.handlers.lock().unwrap_or_else(|p| p.into_inner());
        handlers.retain(|h| !h.is_finished());
        if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut stream = stream;
            let _ = stream.write_all(b"421 4.3.2 sink: too many connections\r\n");
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let worker = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("smtp-sink-conn".to_string())
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                if let Err(err) = serve(stream, &worker)
                    && !worker.stop.load(Ordering::SeqCst)
                {
                    eprintln!("smtp sink: connection from {peer:?} ended with an error: {err}");
                }
                worker.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(handle) => handlers.push(handle),
            Err(err) => {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                eprintln!("smtp sink: cannot spawn a connection thread: {err}");
            }
        }
    }
}

/// Reads one line ending in LF into `buf` (cleared first), waking up every
/// [`POLL`] to check for shutdown. Ok(false) at end of stream, or when the
/// sink stops. Errors on a line longer than `max` or after [`IDLE_TIMEOUT`].
fn read_line(reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>, max: usize, shared: &Shared) -> io::Result<bool> {
    buf.clear();
    let started = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let room = (max + 1).saturating_sub(buf.len()) as u64;
        match reader.by_ref().take(room).read_until(b'\n', buf) {
            Ok(0) => return Ok(false),
            Ok(_) if buf.ends_with(b"\n") => return Ok(true),
            Ok(_) if buf.len() > max => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            // Partial line at end of stream.
            Ok(_) => return Ok(false),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if started.elapsed() >= IDLE_TIMEOUT {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "client idle too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The address inside `<...>` at the start of `arg` (after `FROM:`/`TO:`),
/// ignoring ESMTP parameters after it.
fn parse_path(arg: &str) -> Option<String> {
    let arg = arg.trim_start();
    if let Some(rest) = arg.strip_prefix('<') {
        let end = rest.find('>')?;
        return Some(rest[..end].to_string());
    }
    // Tolerate a bare address.
    arg.split_whitespace().next().map(str::to_string)
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let reply = |writer: &mut TcpStream, text: &str| -> io::Result<()> {
        writer.write_all(text.as_bytes())?;
        writer.flush()
    };
    reply(
        &mut writer,
        &format!("220 {SINK_HOSTNAME} ESMTP egress-milter test sink\r\n"),
    )?;

    let mut helo = String::new();
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    while read_line(&mut reader, &mut line, MAX_COMMAND_LINE, shared)? {
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match command.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (command.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" => {
                helo = arg.to_string();
                mail_from = None;
                rcpt_to.clear();
                reply(
                    &mut writer,
                    &format!(
                        "250-{SINK_HOSTNAME}\r\n250-PIPELINING\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n\
                         250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
                    ),
                )?;
            }
            "HELO" => {
                helo = arg.to_string();
                mail_from = None;
                rcpt_to.clear();
                reply(&mut writer, &format!("250 {SINK_HOSTNAME}\r\n"))?;
            }
            "MAIL" => {
                let path = arg
                    .get(..5)
                    .filter(|p| p.eq_ignore_ascii_case("FROM:"))
                    .and_then(|_| parse_path(&arg[5..]));
                match path {
                    _ if mail_from.is_some() => reply(&mut writer, "503 5.5.1 nested MAIL command\r\n")?,
                    Some(path) => {
                        mail_from = Some(path);
                        rcpt_to.clear();
                        reply(&mut writer, "250 2.1.0 Ok\r\n")?;
                    }
                    None => reply(&mut writer, "501 5.5.4 syntax: MAIL FROM:<address>\r\n")?,
                }
            }
            "RCPT" => {
                let path = arg
                    .get(..3)
                    .filter(|p| p.eq_ignore_ascii_case("TO:"))
                    .and_then(|_| parse_path(&arg[3..]));
                match path {
                    _ if mail_from.is_none() => reply(&mut writer, "503 5.5.1 need MAIL command\r\n")?,
                    Some(path) if shared.is_unknown(&path) => {
                        shared.refused_unknown.fetch_add(1, Ordering::SeqCst);
                        reply(
                            &mut writer,
                            &format!("550 5.1.1 <{path}>: Recipient address rejected: User unknown\r\n"),
                        )?;
                    }
                    Some(path) => {
                        rcpt_to.push(path);
                        reply(&mut writer, "250 2.1.5 Ok\r\n")?;
                    }
                    None => reply(&mut writer, "501 5.5.4 syntax: RCPT TO:<address>\r\n")?,
                }
            }
            "DATA" => {
                let Some(from) = mail_from.take() else {
                    reply(&mut writer, "503 5.5.1 need MAIL command\r\n")?;
                    continue;
                };
                if rcpt_to.is_empty() {
                    reply(&mut writer, "554 5.5.1 no valid recipients\r\n")?;
                    continue;
                }
                reply(&mut writer, "354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let Some(data) = read_data(&mut reader, shared)? else {
                    return Ok(());
                };
                if data.len() > MAX_MESSAGE {
                    rcpt_to.clear();
                    reply(&mut writer, "552 5.3.4 message too big\r\n")?;
                    continue;
                }
                let seq = {
                    let mut messages = shared.lock_messages();
                    let seq = messages.len() + 1;
                    let message = ReceivedMessage {
                        seq,
                        peer,
                        helo: helo.clone(),
                        mail_from: from,
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        data,
                    };
                    shared.record(&message);
                    messages.push(message);
                    shared.arrived.notify_all();
                    seq
                };
                reply(&mut writer, &format!("250 2.0.0 Ok: queued as SINK{seq}\r\n"))?;
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                reply(&mut writer, "250 2.0.0 Ok\r\n")?;
            }
            "NOOP" => reply(&mut writer, "250 2.0.0 Ok\r\n")?,
            "VRFY" => reply(&mut writer, "252 2.0.0 will accept anything\r\n")?,
            "QUIT" => {
                reply(&mut writer, "221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => reply(&mut writer, "502 5.5.2 command not recognized\r\n")?,
        }
    }
    Ok(())
}

/// Reads message content up to the lone `.`, undoing dot-stuffing. None if
/// the connection ended first. Content beyond [`MAX_MESSAGE`] is read but
/// not kept (the caller then refuses the message).
fn read_data(reader: &mut BufReader<TcpStream>, shared: &Shared) -> io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(reader, &mut line, MAX_MESSAGE, shared)? {
            return Ok(None);
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(Some(data));
        }
        let content = if line.starts_with(b".") { &line[1..] } else { &line[..] };
        if data.len() <= MAX_MESSAGE {
            data.extend_from_slice(content);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Envelope, SmtpClient, Stage, build_message, send_message};

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn records_envelope_and_unstuffed_content() {
        let sink = SmtpSink::start().expect("start the sink");
        let content = build_message(
            &[("Subject", "dots"), ("X-Folded", "one\r\n\ttwo")],
            ".leading dot\n..two dots\nplain\n.\n",
        );
        let outcome = send_message(
            &Envelope::new(sink.port(), "a@example.com", &["b@remote.test", "c@remote.test"]).content(&content),
        )
        .expect("talk to the sink");
        assert!(outcome.accepted(), "{}", outcome.transcript);
        assert_eq!(outcome.queue_id().as_deref(), Some("SINK1"));
        assert!(sink.wait_for_count(1, WAIT));
        let message = &sink.messages()[0];
        assert_eq!(message.mail_from, "a@example.com");
        assert_eq!(message.rcpt_to, ["b@remote.test", "c@remote.test"]);
        assert_eq!(message.helo, "client.test");
        assert_eq!(message.text(), content);
        assert_eq!(message.header("subject").as_deref(), Some("dots"));
        assert_eq!(message.header("X-Folded").as_deref(), Some("one two"));
        assert_eq!(message.body(), ".leading dot\r\n..two dots\r\nplain\r\n.\r\n");
        assert_eq!(sink.messages_to("C@remote.test").len(), 1);
    }

    #[test]
    fn records_each_message_to_a_directory() {
        let sink = SmtpSink::start().expect("start the sink");
        let dir = tempfile::tempdir().expect("temp dir");
        sink.record_to(&dir.path().join("sink")).expect("record_to");
        let content = build_message(&[("Subject", "kept")], "body\n");
        for _ in 0..2 {
            let outcome = send_message(
                &Envelope::new(sink.port(), "a@example.com", &["b@remote.test", "c@remote.test"]).content(&content),
            )
            .expect("talk to the sink");
            assert!(outcome.accepted(), "{}", outcome.transcript);
        }
        assert!(sink.wait_for_count(2, WAIT));
        for name in ["0001.eml", "0002.eml"] {
            let file = std::fs::read_to_string(dir.path().join("sink").join(name)).expect(name);
            assert_eq!(
                file,
                format!(
                    "X-Sink-Envelope-From: <a@example.com>\r\nX-Sink-Envelope-To: <b@remote.test>, \
                     <c@remote.test>\r\n{content}"
                )
            );
        }
    }

    #[test]
    fn answers_pipelined_commands_in_order() {
        let sink = SmtpSink::start().expect("start the sink");
        let mut client = SmtpClient::connect(sink.port(), None).expect("connect");
        assert_eq!(client.greeting().code, 220);
        assert!(
            client
                .ehlo("pipe.test")
                .expect("EHLO")
                .lines
                .iter()
                .any(|l| l == "PIPELINING")
        );
        // Send a whole transaction in one write, then read the replies.
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, sink.port())).expect("connect raw");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream
            .write_all(
                b"EHLO raw.test\r\nMAIL FROM:<> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<x@r.test> NOTIFY=NEVER\r\n\
                  RSET\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<y@r.test>\r\nDATA\r\n",
            )
            .expect("write");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut codes = Vec::new();
        let mut line = String::new();
        while codes.len() < 7 {
            line.clear();
            assert!(reader.read_line(&mut line).expect("read") > 0, "sink closed early");
            if line.as_bytes().get(3) == Some(&b' ') {
                codes.push(line[..3].to_string());
            }
        }
        assert_eq!(codes, ["220", "250", "250", "250", "250", "250", "250"]);
        line.clear();
        reader.read_line(&mut line).expect("read 354");
        assert!(line.starts_with("354"), "{line}");
        stream
            .write_all(b"Subject: raw\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            .expect("write data");
        line.clear();
        reader.read_line(&mut line).expect("read 250");
        assert!(line.starts_with("250 2.0.0"), "{line}");
        assert!(sink.wait_for_count(1, WAIT));
        let message = &sink.messages()[0];
        assert_eq!(
            (message.mail_from.as_str(), message.rcpt_to.clone()),
            ("s@r.test", vec!["y@r.test".to_string()])
        );
        assert_eq!(client.noop().expect("NOOP").code, 250);
        assert_eq!(client.quit().expect("QUIT").code, 221);
    }

    #[test]
    fn refuses_unknown_users_with_5_1_1_and_keeps_the_others() {
        let sink = SmtpSink::start().expect("start the sink");
        let outcome = send_message(&Envelope::new(
            sink.port(),
            "list@example.org",
            &[
                "member@remote.test",
                "Unknown-old.member@remote.test",
                "other@remote.test",
            ],
        ))
        .expect("talk to the sink");
        assert!(outcome.accepted(), "{}", outcome.transcript);
        let refusal = outcome
            .rcpt_reply("Unknown-old.member@remote.test")
            .expect("a reply to the unknown recipient");
        assert_eq!(
            (refusal.code, refusal.enhanced.as_deref()),
            (550, Some("5.1.1")),
            "{refusal}"
        );
        assert_eq!(
            refusal.text(),
            "<Unknown-old.member@remote.test>: Recipient address rejected: User unknown"
        );
        assert_eq!(
            outcome.accepted_recipients(),
            ["member@remote.test", "other@remote.test"]
        );
        assert!(sink.wait_for_count(1, WAIT));
        assert_eq!(sink.messages()[0].rcpt_to, ["member@remote.test", "other@remote.test"]);
        assert_eq!(sink.refused_unknown(), 1);

        // Only unknown recipients: nothing to deliver, DATA is refused.
        let outcome = send_message(&Envelope::new(sink.port(), "a@example.org", &["unknown@remote.test"]))
            .expect("talk to the sink");
        assert_eq!(outcome.refused_at(), Some(Stage::RcptTo), "{}", outcome.transcript);
        assert_eq!(sink.refused_unknown(), 2);
        assert_eq!(sink.count(), 1);
    }

    #[test]
    fn the_unknown_users_can_be_chosen() {
        let users = UnknownUsers::none()
            .address("Gone@Remote.test")
            .local_part_prefix("stale-");
        assert!(users.contains("gone@remote.test"));
        assert!(users.contains("STALE-1@elsewhere.test"));
        assert!(!users.contains("unknown@remote.test"));
        assert!(!users.contains("gone@other.test"));
        assert!(!users.contains("not-stale-1@remote.test"));
        assert!(UnknownUsers::default().contains("unknown7@x.test"));
        assert!(!UnknownUsers::default().contains("x@unknown.test"));

        let sink = SmtpSink::start().expect("start the sink");
        sink.set_unknown_users(users);
        let mut client = SmtpClient::connect(sink.port(), None).expect("connect");
        assert_eq!(client.ehlo("client.test").expect("EHLO").code, 250);
        assert_eq!(client.mail_from("a@example.org").expect("MAIL").code, 250);
        assert_eq!(client.rcpt_to("gone@remote.test").expect("RCPT").code, 550);
        assert_eq!(client.rcpt_to("stale-2@remote.test").expect("RCPT").code, 550);
        assert_eq!(client.rcpt_to("unknown@remote.test").expect("RCPT").code, 250);
        assert_eq!(client.quit().expect("QUIT").code, 221);
        assert_eq!(sink.refused_unknown(), 2);
    }

    #[test]
    fn refuses_out_of_order_commands() {
        let sink = SmtpSink::start().expect("start the sink");
        let mut client = SmtpClient::connect(sink.port(), None).expect("connect");
        assert_eq!(client.rcpt_to("x@r.test").expect("RCPT").code, 503);
        assert_eq!(client.data_start().expect("DATA").code, 503);
        assert_eq!(client.command("BDAT 10 LAST").expect("BDAT").code, 502);
        assert_eq!(client.mail_from("a@r.test").expect("MAIL").code, 250);
        assert_eq!(client.data_start().expect("DATA").code, 554);
        assert!(!sink.wait_for_count(1, Duration::from_millis(50)));
        assert_eq!(sink.count(), 0);
    }
}
