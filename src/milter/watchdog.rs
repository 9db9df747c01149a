// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The watchdog on MTA connections: the limits indymilter leaves to us.
//!
//! indymilter 0.3 bounds each milter packet with one timeout
//! (`Config::connection_timeout`, libmilter's 7210 s) that runs from the
//! moment it wants the next command, so a connection that never negotiates,
//! or stops in the middle of a packet, holds a slot for two hours. At
//! `max_connections` it simply stops calling accept. A command its state
//! machine cannot place after negotiation is dropped without a reply
//! (`session.rs`: "ignoring unexpected command"), and the MTA waits for its
//! own timeout; a packet that announces more than 1 MiB ends the session.
//! All of this is traced at `trace` level only.
//!
//! [`Guard`] wraps the listener. It keeps the real count of open connections
//! (indymilter is given one slot more). When every slot is taken it still
//! accepts new connections, up to [`MAX_WAITING`], and holds them in line
//! for a slot: so it can say so in the log, time each wait from the connect,
//! and notice when the MTA gives up on one (it reads ahead what the MTA
//! sent, its negotiation, and sees the connection close), which it logs and
//! counts (`egress_milter_connection_waits_total`). Each stream it hands out
//! is [`Watched`]: it follows the milter framing in both directions (a
//! 4-byte length, then a command or reply byte and its payload) and ends the
//! session with an I/O error, logged, when
//! - the MTA has not negotiated `read_timeout` after the session started,
//!   has not finished a packet `read_timeout` after its first byte, or does
//!   not take our reply within `read_timeout`;
//! - a negotiated connection has sent nothing for `idle_timeout` between
//!   SMTP commands, or for `data_idle_timeout` from DATA to the end of the
//!   message, while the client uploads it (the MTA sends the headers and
//!   body only once it has all of it);
//! - indymilter asks for the next command without having answered one that
//!   needs an answer (it dropped it as out of order);
//! - a packet announces more than indymilter accepts.
//!
//! indymilter then aborts the transaction, closes the connection, and the
//! MTA applies its `milter_default_action`. Every line is rate-limited per
//! kind ([`LOG_INTERVAL`]) and says how many events it stands for.

use crate::config::{Config, format_duration};
use crate::milter::listener::QuickAckStream;
use crate::milter::throttle::Throttle;
use crate::ops::metrics::Observer;
use indymilter::{EitherStream, Listener, ProtoOpts};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::{debug, warn};

/// At most one log line per kind of event in this interval, so a flood of
/// bad connections cannot flood the journal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The largest payload indymilter reads (its `Message::MAX_BUFFER_LEN`,
/// 1 MiB less the command byte); a packet that announces more closes the
/// connection.
pub const MAX_PAYLOAD: u32 = 1024 * 1024 - 1;

/// Replies that answer a command; the others (header changes, quarantine,
/// progress) come before one of these at the end of a message.
const FINAL_REPLIES: &[u8] = b"acdrstyO";

/// Replies that refuse a command: to DATA, the MTA refuses the client's
/// DATA, and no message follows.
const REFUSALS: &[u8] = b"rty";

/// How many MTA connections the guard holds while they wait for a slot. It
/// accepts them at once, so it can time each wait from the connect and
/// notice when the MTA gives up on one; beyond this, connections wait in
/// the kernel's listen queue, unseen. Each costs a file descriptor and at
/// most [`READ_AHEAD`] bytes.
pub const MAX_WAITING: usize = 128;

/// How much of a waiting connection the guard reads, to see it close: an
/// MTA sends its negotiation (17 bytes) and waits for the reply. The
/// session reads these bytes first. A connection that sends more is left
/// alone until it gets its slot.
const READ_AHEAD: usize = 1024;

/// The milter protocol version from which the MTA sends DATA (Postfix's
/// `milter8.c`: `SMFIP_NODATA` is a version 4 event).
const DATA_SINCE_VERSION: u32 = 4;

/// How long the MTA may take, from `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To negotiate after the session starts, to finish a packet once begun,
    /// and to take a reply of ours.
    pub read: Duration,
    /// Between packets, once negotiated, outside a message's DATA phase.
    pub idle: Duration,
    /// Between packets from DATA to the end of the message.
    pub data_idle: Duration,
}

impl Timeouts {
    pub fn new(config: &Config) -> Self {
        Self {
            read: config.read_timeout.0,
            idle: config.idle_timeout.0,
            data_idle: config.data_idle_timeout(),
        }
    }

    /// indymilter's own timeout per packet read or written, which runs from
    /// the moment it asks for the next command: longer than an idle wait
    /// plus a packet, so that it never fires before ours (which log why).
    pub fn backstop(&self) -> Duration {
        self.idle.max(self.data_idle) + self.read + Duration::from_secs(5)
    }
}

/// `t + d`, or a year after `t` if that cannot be represented.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(t)
}

/// Who is at the other end of a connection, for log lines.
pub trait Peer {
    fn peer(&self) -> String;
}

impl Peer for QuickAckStream {
    fn peer(&self) -> String {
        self.peer_addr().map_or_else(|_| "unknown".into(), |a| a.to_string())
    }
}

impl Peer for UnixStream {
    fn peer(&self) -> String {
        match self.peer_cred() {
            Ok(c) => match c.pid() {
                Some(pid) => format!("unix pid {pid} uid {}", c.uid()),
                None => format!("unix uid {}", c.uid()),
            },
            Err(_) => "unix".into(),
        }
    }
}

impl<T: Peer, U: Peer> Peer for EitherStream<T, U> {
    fn peer(&self) -> String {
        match self {
            EitherStream::Tcp(s) => s.peer(),
            EitherStream::Unix(s) => s.peer(),
        }
    }
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Negotiation,
    Packet,
    Idle,
    DataIdle,
    Write,
    OutOfOrder,
    Oversized(u32),
}

/// The log throttles, shared by all connections.
struct Logs {
    negotiation: Throttle,
    packet: Throttle,
    idle: Throttle,
    data_idle: Throttle,
    write: Throttle,
    out_of_order: Throttle,
    oversized: Throttle,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            negotiation: Throttle::new(LOG_INTERVAL),
            packet: Throttle::new(LOG_INTERVAL),
            idle: Throttle::new(LOG_INTERVAL),
            data_idle: Throttle::new(LOG_INTERVAL),
            write: Throttle::new(LOG_INTERVAL),
            out_of_order: Throttle::new(LOG_INTERVAL),
            oversized: Throttle::new(LOG_INTERVAL),
        }
    }
}

impl Logs {
    fn throttle(&self, reason: Reason) -> &Throttle {
        match reason {
            Reason::Negotiation => &self.negotiation,
            Reason::Packet => &self.packet,
            Reason::Idle => &self.idle,
            Reason::DataIdle => &self.data_idle,
            Reason::Write => &self.write,
            Reason::OutOfOrder => &self.out_of_order,
            Reason::Oversized(_) => &self.oversized,
        }
    }
}

/// A command or reply byte as a log value: `"M"`, or `"0x00"`.
fn kind_name(kind: Option<u8>) -> String {
    match kind {
        Some(k) if k.is_ascii_graphic() => char::from(k).to_string(),
        Some(k) => format!("0x{k:02x}"),
        None => "none".into(),
    }
}

/// Milliseconds, for log fields.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The listener with the connection count and the watchdog.
pub struct Guard<L: Listener> {
    inner: L,
    timeouts: Timeouts,
    max_connections: usize,
    slots: Arc<Semaphore>,
    /// Connections accepted while every slot was taken, oldest first: they
    /// get slots in this order.
    waiting: VecDeque<Waiting<L::Io>>,
    /// The slot the oldest waiting connection will get.
    next_slot: Option<SlotFuture>,
    /// The longest wait that ended (with a slot, or the MTA gone) since the
    /// last "max_connections reached" line.
    longest_wait: Duration,
    /// "max_connections reached", "the MTA gave up on a connection".
    full: Throttle,
    gave_up: Throttle,
    /// Where the waits are counted (metrics).
    observer: Arc<Observer>,
    logs: Arc<Logs>,
}

type SlotFuture = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A connection waiting for a slot.
struct Waiting<S> {
    stream: S,
    /// When it was accepted: at once after the connect while fewer than
    /// [`MAX_WAITING`] wait.
    since: Instant,
    /// What the MTA sent meanwhile (its negotiation), for the session.
    early: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Waiting<S> {
    /// Reads what the MTA sent so far; `true` once the MTA has closed (or
    /// reset) the connection.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> bool {
        let mut chunk = [0; 256];
        while self.early.len() < READ_AHEAD {
            let room = (READ_AHEAD - self.early.len()).min(chunk.len());
            let mut buf = ReadBuf::new(&mut chunk[..room]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => self.early.extend_from_slice(buf.filled()),
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
        }
        false
    }
}

impl<L: Listener> Guard<L> {
    pub fn new(inner: L, max_connections: usize, timeouts: Timeouts, observer: Arc<Observer>) -> Self {
        // tokio's limit; a configuration this large is not usable anyway.
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS - 1);
        Self {
            inner,
            timeouts,
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            waiting: VecDeque::new(),
            next_slot: None,
            longest_wait: Duration::ZERO,
            full: Throttle::new(LOG_INTERVAL),
            gave_up: Throttle::new(LOG_INTERVAL),
            observer,
            logs: Arc::new(Logs::default()),
        }
    }

    /// The limit in force: indymilter must be given one more, so that its
    /// accept loop still reaches us when every slot is taken.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn watch(&self, stream: L::Io, slot: OwnedSemaphorePermit, early: Vec<u8>) -> Watched<L::Io> {
        Watched::new(stream, slot, self.timeouts, self.logs.clone(), early)
    }

    /// A connection joined the line: the first of a while is logged.
    fn note_full(&mut self) {
        let Some(connections) = self.full.note() else { return };
        // The oldest still waiting counts too: its wait is not over.
        let oldest = self.waiting.front().map_or(Duration::ZERO, |w| w.since.elapsed());
        let longest = std::mem::take(&mut self.longest_wait).max(oldest);
        warn!(
            max_connections = self.max_connections,
            waiting = self.waiting.len(),
            connections,
            longest_wait_ms = millis(longest),
            "max_connections reached: new MTA connections wait for a session to end; the MTA gives up on one after its milter_command_timeout"
        );
    }

    /// Drops the waiting connections the MTA closed, and says so.
    fn drop_abandoned(&mut self, cx: &mut Context<'_>) {
        let mut gone = Vec::new();
        self.waiting.retain_mut(|w| {
            let closed = w.poll_closed(cx);
            if closed {
                gone.push(w.since.elapsed());
            }
            !closed
        });
        for waited in gone {
            self.longest_wait = self.longest_wait.max(waited);
            self.observer.slot_waits().gave_up.fetch_add(1, Ordering::Relaxed);
            if let Some(gave_up) = self.gave_up.note() {
                warn!(
                    max_connections = self.max_connections,
                    waited_ms = millis(waited),
                    gave_up,
                    "the MTA gave up on a connection that waited for a slot (its milter_command_timeout ran out, and it applied milter_default_action to the SMTP session): raise max_connections to at least the MTA's processes that use the milter, or find what holds the sessions"
                );
            }
        }
    }
}

impl<L> Listener for Guard<L>
where
    L: Listener,
    L::Io: Peer,
{
    type Io = Watched<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        // New connections: to a slot while none waits, else in line.
        while self.waiting.len() < MAX_WAITING {
            let stream = match self.inner.poll_accept(cx) {
                Poll::Ready(Ok(stream)) => stream,
                // With connections in line (and file descriptors held for
                // them), a failed accept is tried again when one leaves;
                // the connection stays in the kernel's queue meanwhile.
                Poll::Ready(Err(e)) if !self.waiting.is_empty() => {
                    debug!("accepting an MTA connection failed while others wait for a slot: {e}");
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            };
            if self.waiting.is_empty()
                && let Ok(slot) = self.slots.clone().try_acquire_owned()
            {
                return Poll::Ready(Ok(self.watch(stream, slot, Vec::new())));
            }
            self.waiting.push_back(Waiting {
                stream,
                since: Instant::now(),
                early: Vec::new(),
            });
            self.note_full();
        }
        self.drop_abandoned(cx);
        let waits = self.observer.slot_waits();
        waits.waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
        if self.waiting.is_empty() {
            self.next_slot = None;
            return Poll::Pending;
        }
        let slots = &self.slots;
        let next = self
            .next_slot
            .get_or_insert_with(|| Box::pin(slots.clone().acquire_owned()));
        let slot = match next.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(slot)) => slot,
            // The semaphore is never closed.
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
        };
        self.next_slot = None;
        let Some(w) = self.waiting.pop_front() else {
            // Not reached: the line was not empty. The slot goes back, and
            // the accept loop looks again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let waited = w.since.elapsed();
        self.longest_wait = self.longest_wait.max(waited);
        let waits = self.observer.slot_waits();
        waits.served.fetch_add(1, Ordering::Relaxed);
        waits.waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
        debug!(waited_ms = millis(waited), "a waiting MTA connection got a free slot");
        Poll::Ready(Ok(self.watch(w.stream, slot, w.early)))
    }
}

/// Follows the milter framing of one direction of a connection.
#[derive(Default)]
struct Framing {
    /// The length (4 bytes, big-endian, counting the kind byte) and the kind.
    header: [u8; 5],
    header_seen: usize,
    /// Payload bytes of the current packet still to come.
    remaining: usize,
    /// The first payload bytes (a negotiation's version, actions, options).
    head: [u8; 12],
    head_seen: usize,
}

/// What [`Framing::feed`] found.
enum Frame<'a> {
    /// A complete packet and its first payload bytes.
    Packet { kind: u8, head: &'a [u8] },
    /// A header announcing this many bytes (kind included), more than
    /// indymilter reads; nothing after it is followed.
    Oversized(u32),
}

impl Framing {
    /// Whether part of a packet has been seen, but not all of it.
    fn in_packet(&self) -> bool {
        self.header_seen > 0
    }

    /// The kind of the packet under way, once its header is complete.
    fn kind(&self) -> Option<u8> {
        (self.header_seen == 5).then_some(self.header[4])
    }

    fn feed(&mut self, mut bytes: &[u8], mut found: impl FnMut(Frame<'_>)) {
        while !bytes.is_empty() {
            if self.header_seen < 5 {
                let n = (5 - self.header_seen).min(bytes.len());
                self.header[self.header_seen..self.header_seen + n].copy_from_slice(&bytes[..n]);
                self.header_seen += n;
                bytes = &bytes[n..];
                if self.header_seen < 5 {
                    return;
                }
                let len = u32::from_be_bytes([self.header[0], self.header[1], self.header[2], self.header[3]]);
                let payload = len.saturating_sub(1);
                if payload > MAX_PAYLOAD {
                    found(Frame::Oversized(len));
                    return;
                }
                self.remaining = payload as usize;
            } else {
                let n = self.remaining.min(bytes.len());
                let keep = (self.head.len() - self.head_seen).min(n);
                self.head[self.head_seen..self.head_seen + keep].copy_from_slice(&bytes[..keep]);
                self.head_seen += keep;
                self.remaining -= n;
                bytes = &bytes[n..];
            }
            if self.remaining == 0 {
                found(Frame::Packet {
                    kind: self.header[4],
                    head: &self.head[..self.head_seen],
                });
                self.header_seen = 0;
                self.head_seen = 0;
            }
        }
    }
}

/// Whether indymilter must answer a command, given the stages whose replies
/// were negotiated away.
fn needs_reply(kind: u8, noreply: ProtoOpts) -> bool {
    let opt = match kind {
        b'O' | b'E' => return true,
        b'C' => ProtoOpts::NOREPLY_CONNECT,
        b'H' => ProtoOpts::NOREPLY_HELO,
        b'M' => ProtoOpts::NOREPLY_MAIL,
        b'R' => ProtoOpts::NOREPLY_RCPT,
        b'T' => ProtoOpts::NOREPLY_DATA,
        b'L' => ProtoOpts::NOREPLY_HEADER,
        b'N' => ProtoOpts::NOREPLY_EOH,
        b'B' => ProtoOpts::NOREPLY_BODY,
        b'U' => ProtoOpts::NOREPLY_UNKNOWN,
        // Abort, macros and quit have no reply; other bytes end the session.
        _ => return false,
    };
    !noreply.contains(opt)
}

/// An MTA connection under the watchdog; dropping it frees its slot.
pub struct Watched<S> {
    stream: S,
    _slot: OwnedSemaphorePermit,
    timeouts: Timeouts,
    logs: Arc<Logs>,
    /// The MTA negotiates within `read_timeout` of this.
    started: Instant,
    negotiated: bool,
    incoming: Framing,
    outgoing: Framing,
    /// When the first byte of the packet under way arrived.
    packet_started: Instant,
    /// Since when indymilter has waited for the next packet.
    idle_since: Option<Instant>,
    /// Since when a write of ours has waited for the MTA to read.
    write_since: Option<Instant>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Commands read that need an answer not written yet.
    owed: u32,
    /// The stages whose replies the negotiation turned off.
    noreply: ProtoOpts,
    /// The MTA sends DATA (protocol version 4 or later, and not turned off
    /// by the negotiation); otherwise a message's upload follows its last
    /// RCPT.
    data_command: bool,
    /// From DATA (or the first RCPT, without DATA) to the end of the
    /// message: the client uploads it, and `data_idle_timeout` applies.
    in_data: bool,
    /// What the guard read while the connection waited for a slot; the
    /// session reads it first, from `early_at` on.
    early: Vec<u8>,
    early_at: usize,
    /// The last two commands read, for log lines.
    last: Option<u8>,
    before_last: Option<u8>,
}

impl<S> Watched<S> {
    fn new(stream: S, slot: OwnedSemaphorePermit, timeouts: Timeouts, logs: Arc<Logs>, early: Vec<u8>) -> Self {
        let now = Instant::now();
        Self {
            stream,
            _slot: slot,
            timeouts,
            logs,
            started: now,
            negotiated: false,
            incoming: Framing::default(),
            outgoing: Framing::default(),
            packet_started: now,
            idle_since: None,
            write_since: None,
            read_timer: None,
            write_timer: None,
            owed: 0,
            noreply: ProtoOpts::empty(),
            data_command: true,
            in_data: false,
            early,
            early_at: 0,
            last: None,
            before_last: None,
        }
    }
}

impl<S: Peer> Watched<S> {
    /// Follows bytes read from the MTA; an error closes the connection.
    fn received(&mut self, bytes: &[u8]) -> io::Result<()> {
        let was_in_packet = self.incoming.in_packet();
        let mut completed = false;
        let mut oversized = None;
        self.incoming.feed(bytes, |frame| match frame {
            Frame::Packet { kind, .. } => {
                completed = true;
                self.negotiated |= kind == b'O';
                if needs_reply(kind, self.noreply) {
                    self.owed += 1;
                }
                match kind {
                    b'T' => self.in_data = true,
                    b'R' if !self.data_command => self.in_data = true,
                    // The end of the message, an abort, a new transaction
                    // or session.
                    b'E' | b'A' | b'M' | b'Q' | b'K' => self.in_data = false,
                    _ => {}
                }
                self.before_last = self.last.replace(kind);
            }
            Frame::Oversized(len) => oversized = Some(len),
        });
        if let Some(len) = oversized {
            return Err(self.close(Reason::Oversized(len)));
        }
        if self.incoming.in_packet() && (completed || !was_in_packet) {
            self.packet_started = Instant::now();
        }
        Ok(())
    }

    /// Follows bytes we wrote to the MTA.
    fn sent(&mut self, bytes: &[u8]) {
        self.outgoing.feed(bytes, |frame| {
            if let Frame::Packet { kind, head } = frame {
                if FINAL_REPLIES.contains(&kind) {
                    self.owed = self.owed.saturating_sub(1);
                    // DATA refused: no message follows.
                    if self.last == Some(b'T') && REFUSALS.contains(&kind) {
                        self.in_data = false;
                    }
                }
                // Our negotiation reply: version, actions, options.
                if kind == b'O'
                    && let Some(&[v1, v2, v3, v4, _, _, _, _, a, b, c, d]) = head.get(..12)
                {
                    let opts = ProtoOpts::from_bits_truncate(u32::from_be_bytes([a, b, c, d]));
                    self.noreply = opts;
                    self.data_command = u32::from_be_bytes([v1, v2, v3, v4]) >= DATA_SINCE_VERSION
                        && !opts.contains(ProtoOpts::NO_DATA);
                }
            }
        });
    }

    /// Logs why the connection is closed (rate-limited) and returns the
    /// error that ends the session.
    fn close(&mut self, reason: Reason) -> io::Error {
        if let Some(closed) = self.logs.throttle(reason).note() {
            let peer = self.stream.peer();
            let peer = peer.as_str();
            let read_timeout = format_duration(self.timeouts.read);
            let read_timeout = read_timeout.as_str();
            let last = kind_name(self.last);
            let last = last.as_str();
            match reason {
                Reason::Negotiation => warn!(
                    peer,
                    read_timeout, closed, "closing a milter connection: the MTA did not negotiate within read_timeout"
                ),
                Reason::Packet => warn!(
                    peer,
                    read_timeout,
                    command = kind_name(self.incoming.kind()).as_str(),
                    closed,
                    "closing a milter connection: the MTA stopped in the middle of a packet (read_timeout)"
                ),
                Reason::Idle => warn!(
                    peer,
                    idle_timeout = format_duration(self.timeouts.idle).as_str(),
                    last_command = last,
                    closed,
                    "closing a milter connection: no command from the MTA within idle_timeout"
                ),
                Reason::DataIdle => warn!(
                    peer,
                    data_idle_timeout = format_duration(self.timeouts.data_idle).as_str(),
                    last_command = last,
                    closed,
                    "closing a milter connection: no command from the MTA within data_idle_timeout, in a message's DATA phase"
                ),
                Reason::Write => warn!(
                    peer,
                    read_timeout, closed, "closing a milter connection: the MTA does not read our reply (read_timeout)"
                ),
                Reason::OutOfOrder => warn!(
                    peer,
                    command = last,
                    after = kind_name(self.before_last).as_str(),
                    closed,
                    "closing a milter connection: the MTA sent a command out of order, which the milter library cannot answer"
                ),
                Reason::Oversized(len) => warn!(
                    peer,
                    bytes = len,
                    max_bytes = MAX_PAYLOAD + 1,
                    closed,
                    "closing a milter connection: the MTA announced a packet larger than 1 MiB"
                ),
            }
        }
        let kind = match reason {
            Reason::OutOfOrder | Reason::Oversized(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, format!("{reason:?}"))
    }

    /// While no byte comes: the deadline that applies now.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (deadline, reason) = if !self.negotiated {
            (after(self.started, self.timeouts.read), Reason::Negotiation)
        } else if self.incoming.in_packet() {
            (after(self.packet_started, self.timeouts.read), Reason::Packet)
        } else {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            if self.in_data {
                (after(since, self.timeouts.data_idle), Reason::DataIdle)
            } else {
                (after(since, self.timeouts.idle), Reason::Idle)
            }
        };
        if poll_timer(&mut self.read_timer, deadline, cx).is_ready() {
            return Poll::Ready(Err(self.close(reason)));
        }
        Poll::Pending
    }
}

/// Polls a timer for `deadline`, ready once it has passed.
///
/// Moving a timer registers it anew, and the deadline moves with every
/// command; so it is moved here only when it must fire earlier. One that
/// fires before the deadline (set for an earlier wait) is moved then.
fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let timer = timer.get_or_insert_with(|| Box::pin(sleep_until(deadline)));
    if deadline < timer.deadline() {
        timer.as_mut().reset(deadline);
    }
    loop {
        ready!(timer.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
}

impl<S: AsyncRead + Peer + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // indymilter answers each command before it reads the next: if it
        // reads again with an answer owed, it dropped the command.
        if this.owed > 0 {
            return Poll::Ready(Err(this.close(Reason::OutOfOrder)));
        }
        // First what the guard read while the connection waited.
        if this.early_at < this.early.len() && buf.remaining() > 0 {
            let early = std::mem::take(&mut this.early);
            let end = early.len().min(this.early_at + buf.remaining());
            let bytes = &early[this.early_at..end];
            buf.put_slice(bytes);
            this.idle_since = None;
            let received = this.received(bytes);
            this.early_at = end;
            if end < early.len() {
                this.early = early;
            }
            return Poll::Ready(received);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.idle_since = None;
                    this.received(&buf.filled()[before..])?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_read_deadline(cx),
        }
    }
}

impl<S: AsyncWrite + Peer + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.write_since = None;
                this.sent(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let since = *this.write_since.get_or_insert_with(Instant::now);
                if poll_timer(&mut this.write_timer, after(since, this.timeouts.read), cx).is_ready() {
                    return Poll::Ready(Err(this.close(Reason::Write)));
                }
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32 + 1).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(payload);
        p
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Packet { kind: u8, head: Vec<u8> },
        Oversized(u32),
    }

    fn frames(framing: &mut Framing, bytes: &[u8]) -> Vec<Seen> {
        let mut out = Vec::new();
        framing.feed(bytes, |f| {
            out.push(match f {
                Frame::Packet { kind, head } => Seen::Packet {
                    kind,
                    head: head.to_vec(),
                },
                Frame::Oversized(len) => Seen::Oversized(len),
            })
        });
        out
    }

    #[test]
    fn framing_follows_packets_split_and_joined_anywhere() {
        let mut stream = packet(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff, 9, 9]);
        stream.extend(packet(b'D', b"Mi\0ABC\0"));
        stream.extend(packet(b'A', b""));
        stream.extend(packet(b'M', b"<a@b>\0"));
        let whole = frames(&mut Framing::default(), &stream);
        assert_eq!(
            whole,
            [
                Seen::Packet {
                    kind: b'O',
                    head: vec![0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]
                },
                Seen::Packet {
                    kind: b'D',
                    head: b"Mi\0ABC\0".to_vec()
                },
                Seen::Packet {
                    kind: b'A',
                    head: vec![]
                },
                Seen::Packet {
                    kind: b'M',
                    head: b"<a@b>\0".to_vec()
                },
            ]
        );
        for chunk in [1, 2, 3, 5, 7] {
            let mut f = Framing::default();
            let mut found = Vec::new();
            for c in stream.chunks(chunk) {
                found.extend(frames(&mut f, c));
            }
            assert_eq!(found, whole, "chunks of {chunk}");
            assert!(!f.in_packet());
        }
        let mut f = Framing::default();
        assert!(frames(&mut f, &stream[..3]).is_empty());
        assert!(f.in_packet() && f.kind().is_none());
        assert!(frames(&mut f, &stream[3..6]).is_empty());
        assert_eq!(f.kind(), Some(b'O'));
    }

    #[test]
    fn framing_reports_a_header_beyond_the_limit() {
        let at_limit = ((MAX_PAYLOAD + 1).to_be_bytes(), b'B');
        let mut f = Framing::default();
        let mut bytes = at_limit.0.to_vec();
        bytes.push(at_limit.1);
        assert!(frames(&mut f, &bytes).is_empty(), "1 MiB exactly is read");
        let mut f = Framing::default();
        let mut over = (MAX_PAYLOAD + 2).to_be_bytes().to_vec();
        over.extend(b"Bxxxx");
        assert_eq!(frames(&mut f, &over), [Seen::Oversized(MAX_PAYLOAD + 2)]);
    }

    #[test]
    fn replies_owed_follow_the_negotiated_noreply_stages() {
        let none = ProtoOpts::empty();
        for kind in *b"OCHMRTLNBUE" {
            assert!(needs_reply(kind, none), "{}", kind as char);
        }
        for kind in *b"ADKQ" {
            assert!(!needs_reply(kind, none), "{}", kind as char);
        }
        assert!(!needs_reply(b'L', ProtoOpts::NOREPLY_HEADER));
        assert!(needs_reply(b'M', ProtoOpts::NOREPLY_HEADER));
        assert!(needs_reply(b'E', ProtoOpts::all()));
    }

    struct Duplex(tokio::io::DuplexStream);

    impl Peer for Duplex {
        fn peer(&self) -> String {
            "test".into()
        }
    }

    impl AsyncRead for Duplex {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    fn watched(timeouts: Timeouts) -> (Watched<Duplex>, tokio::io::DuplexStream) {
        let (mta, ours) = tokio::io::duplex(64);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        (
            Watched::new(Duplex(ours), slot, timeouts, Arc::default(), Vec::new()),
            mta,
        )
    }

    const TIMEOUTS: Timeouts = Timeouts {
        read: Duration::from_secs(10),
        idle: Duration::from_secs(600),
        data_idle: Duration::from_secs(3600),
    };

    #[tokio::test(start_paused = true)]
    async fn each_wait_has_its_own_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = Instant::now();
        let (mut w, mta) = watched(TIMEOUTS);
        let mut buf = [0; 64];
        // Nothing at all: read_timeout from the start.
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUTS.read);

        // Negotiated, then silent: idle_timeout.
        let (mut w, mut mta2) = watched(TIMEOUTS);
        mta2.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 17);
        w.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        let idle = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(idle.elapsed(), TIMEOUTS.idle);

        // Half a packet after negotiation: read_timeout from its first byte.
        let (mut w, mut mta3) = watched(TIMEOUTS);
        mta3.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 17);
        w.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        tokio::time::sleep(Duration::from_secs(100)).await;
        mta3.write_all(&packet(b'M', b"<a@b>\0")[..7]).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 7);
        let half = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(half.elapsed(), TIMEOUTS.read);

        // A wait that ends after 100 s, then another: the second gets its
        // whole idle_timeout (the timer set for the first is moved on).
        let (mut w, mut mta4) = watched(TIMEOUTS);
        mta4.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 17);
        w.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        let abort_later = async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            mta4.write_all(&packet(b'A', b"")).await.unwrap();
            mta4
        };
        let (read, _mta4) = tokio::join!(w.read(&mut buf), abort_later);
        assert_eq!(read.unwrap(), 5);
        let second = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(second.elapsed(), TIMEOUTS.idle);
        drop(mta);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_left_unanswered_closes_and_a_noreply_header_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut w, mut mta) = watched(TIMEOUTS);
        let mut buf = [0; 64];
        mta.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 17);
        // Our reply turns off the reply to headers.
        let opts = ProtoOpts::NOREPLY_HEADER.bits().to_be_bytes();
        let reply = [[0, 0, 0, 6], [0, 0, 0, 0x20], opts].concat();
        w.write_all(&packet(b'O', &reply)).await.unwrap();
        // A header needs no answer: the next read waits as usual.
        mta.write_all(&packet(b'L', b"Subject\0hi\0")).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 16);
        mta.write_all(&packet(b'M', b"<a@b>\0")).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 11);
        w.write_all(&packet(b'c', b"")).await.unwrap();
        // A RCPT that indymilter dropped: reading again is refused at once.
        mta.write_all(&packet(b'R', b"<c@d>\0")).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 11);
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    /// Our negotiation reply, version 6, with these options.
    fn optneg_reply(opts: ProtoOpts) -> Vec<u8> {
        packet(b'O', &[6, 0, opts.bits()].map(u32::to_be_bytes).concat())
    }

    /// A connection that has negotiated `opts`.
    async fn negotiated(opts: ProtoOpts) -> (Watched<Duplex>, tokio::io::DuplexStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut w, mut mta) = watched(TIMEOUTS);
        let mut buf = [0; 64];
        mta.write_all(&packet(b'O', &[0; 12])).await.unwrap();
        assert_eq!(w.read(&mut buf).await.unwrap(), 17);
        w.write_all(&optneg_reply(opts)).await.unwrap();
        (w, mta)
    }

    /// The MTA sends `kind`; we answer `reply` if given. Returns how long the
    /// next wait for the MTA lasts before the watchdog closes it.
    async fn silence_after(
        w: &mut Watched<Duplex>,
        mta: &mut tokio::io::DuplexStream,
        sent: &[(u8, Option<u8>)],
    ) -> Duration {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0; 64];
        for &(kind, reply) in sent {
            let p = packet(kind, b"x\0");
            mta.write_all(&p).await.unwrap();
            assert_eq!(w.read(&mut buf).await.unwrap(), p.len());
            if let Some(r) = reply {
                w.write_all(&packet(r, b"")).await.unwrap();
                let mut reply = [0; 5];
                mta.read_exact(&mut reply).await.unwrap();
            }
        }
        let silent = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        silent.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_upload_of_a_message_has_data_idle_timeout_and_the_rest_idle_timeout() {
        let none = ProtoOpts::empty();
        let c = Some(b'c');
        // Between commands: idle_timeout.
        let (mut w, mut mta) = negotiated(none).await;
        assert_eq!(
            silence_after(&mut w, &mut mta, &[(b'M', c), (b'R', c)]).await,
            TIMEOUTS.idle
        );
        // After DATA, while the client uploads: data_idle_timeout.
        let (mut w, mut mta) = negotiated(none).await;
        let data = [(b'M', c), (b'R', c), (b'T', c)];
        assert_eq!(silence_after(&mut w, &mut mta, &data).await, TIMEOUTS.data_idle);
        // Also between the headers (other milters take their turns).
        let (mut w, mut mta) = negotiated(none).await;
        let headers = [(b'M', c), (b'R', c), (b'T', c), (b'L', c)];
        assert_eq!(silence_after(&mut w, &mut mta, &headers).await, TIMEOUTS.data_idle);
        // The message is over: idle_timeout again.
        let (mut w, mut mta) = negotiated(none).await;
        let done = [(b'M', c), (b'R', c), (b'T', c), (b'N', c), (b'E', c)];
        assert_eq!(silence_after(&mut w, &mut mta, &done).await, TIMEOUTS.idle);
        let (mut w, mut mta) = negotiated(none).await;
        let aborted = [(b'M', c), (b'R', c), (b'T', c), (b'A', None)];
        assert_eq!(silence_after(&mut w, &mut mta, &aborted).await, TIMEOUTS.idle);
        // DATA refused: no upload follows.
        let (mut w, mut mta) = negotiated(none).await;
        let refused = [(b'M', c), (b'R', c), (b'T', Some(b't'))];
        assert_eq!(silence_after(&mut w, &mut mta, &refused).await, TIMEOUTS.idle);
        // Without DATA in the protocol, the upload follows the recipients.
        let (mut w, mut mta) = negotiated(ProtoOpts::NO_DATA).await;
        assert_eq!(
            silence_after(&mut w, &mut mta, &[(b'M', c), (b'R', c)]).await,
            TIMEOUTS.data_idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_read_while_waiting_for_a_slot_come_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut mta, ours) = tokio::io::duplex(64);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let optneg = packet(b'O', &[0; 12]);
        let mut w = Watched::new(Duplex(ours), slot, TIMEOUTS, Arc::default(), optneg.clone());
        mta.write_all(&packet(b'M', b"<a@b>\0")).await.unwrap();
        let mut buf = [0; 10];
        // In pieces as small as the reader asks for, then the stream.
        assert_eq!(w.read(&mut buf).await.unwrap(), 10);
        assert_eq!(buf[..], optneg[..10]);
        assert_eq!(w.read(&mut buf).await.unwrap(), 7);
        assert_eq!(buf[..7], optneg[10..]);
        assert!(w.negotiated);
        w.write_all(&optneg_reply(ProtoOpts::empty())).await.unwrap();
        let mut rest = [0; 64];
        assert_eq!(w.read(&mut rest).await.unwrap(), 11);
        assert_eq!(w.last, Some(b'M'));
    }
}
