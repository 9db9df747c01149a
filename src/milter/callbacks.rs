// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The milter adapter: negotiation, then one thin callback per SMTP stage
//! that hands the event to the [`Session`] and turns its verdict into a
//! milter status and reply. A verdict that enforces a lock goes out only
//! once the lock is on disk (see [`LOCK_WRITE_WAIT`]).

use super::Reporting;
use super::session::{Session, Verdict};
use super::throttle::Throttle;
use crate::config::{ErrorPolicy, LockedAction};
use crate::locks::{Durability, Ticket};
use crate::ops::metrics::Stage;
use crate::policy::{CurrentPolicy, Policy, snapshot};
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, Macros, NegotiateContext, ProtoOpts,
    SetErrorReply, SmtpReply, SocketInfo, Status,
};
use std::borrow::Cow;
use std::ffi::CString;
use std::time::Duration;
use tracing::{error, warn};

/// How long a reply that enforces a lock (a refusal as locked, a hold, the
/// refusal of the message that tripped the lock) waits for the lock to be
/// on disk. A write takes milliseconds; the bound is for a disk that hangs,
/// and stays well inside the MTA's own timeouts (Sendmail's milter read
/// timeout is 10 s, Postfix's `milter_command_timeout` 30 s). When it
/// passes, or at once when the last write failed, the reply goes out with
/// an error logged: the lock is enforced from memory and the writer keeps
/// retrying, but a crash before it succeeds would forget it.
pub const LOCK_WRITE_WAIT: Duration = Duration::from_secs(3);

/// Per-connection data.
pub struct Connection {
    session: Session,
    /// The MTA was asked not to wait for a reply to each header.
    noreply_header: bool,
    /// The MTA may be told to skip the rest of a body.
    skip: bool,
    /// Time spent deciding in the current transaction's stages so far.
    decided: Duration,
}

/// The callbacks of every connection: each one takes the policy current
/// when it starts, and reports to `reporting`.
pub fn make_callbacks(current: CurrentPolicy, reporting: Reporting) -> Callbacks<Connection> {
    let (c1, c2, c3, c4, c5, c6, c7, c8, c9) = (
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
        current.clone(),
    );
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            Box::pin(handle_negotiate(current.clone(), reporting.clone(), cx, actions, opts))
        })
        .on_connect(move |cx, _host, socket| Box::pin(handle_connect(c1.clone(), cx, socket)))
        .on_helo(move |cx, name| Box::pin(handle_helo(c9.clone(), cx, name)))
        .on_mail(move |cx, args| Box::pin(handle_mail(c2.clone(), cx, args)))
        .on_rcpt(move |cx, args| Box::pin(handle_rcpt(c3.clone(), cx, args)))
        .on_data(move |cx| Box::pin(handle_data(c8.clone(), cx)))
        .on_header(move |cx, name, value| Box::pin(handle_header(c4.clone(), cx, name, value)))
        .on_eoh(move |cx| Box::pin(handle_eoh(c5.clone(), cx)))
        .on_body(move |cx, chunk| Box::pin(handle_body(c7.clone(), cx, chunk)))
        .on_eom(move |cx| Box::pin(handle_eom(c6.clone(), cx)))
        .on_abort(|cx| Box::pin(handle_abort(cx)))
}

/// Returns the connection's data or, if it is missing (an MTA that skipped
/// negotiation), answers with the `on_error` policy.
macro_rules! connection {
    ($current:expr, $cx:expr) => {
        match $cx.data.as_mut() {
            Some(conn) => conn,
            None => {
                error!("milter stage without a negotiated session, answering with the error policy");
                return error_status(&snapshot(&$current), &mut $cx.reply);
            }
        }
    };
}

async fn handle_negotiate(
    current: CurrentPolicy,
    reporting: Reporting,
    cx: &mut NegotiateContext<Connection>,
    actions: Actions,
    opts: ProtoOpts,
) -> Status {
    let session = Session::new(snapshot(&current), reporting);
    // Quarantine is how a locked identity's mail is held; ask for nothing else.
    cx.requested_actions = if actions.contains(Actions::QUARANTINE) {
        Actions::QUARANTINE
    } else {
        // Only worth saying when it matters, and once: it is the same MTA
        // on every connection.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if session.policy().config().locks.locked_action == LockedAction::Hold
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!("the MTA does not offer the quarantine action: locked_action = \"hold\" will reject instead");
        }
        Actions::empty()
    };
    let noreply_header = opts.contains(ProtoOpts::NOREPLY_HEADER);
    if noreply_header {
        cx.requested_opts |= ProtoOpts::NOREPLY_HEADER;
    }
    // HELO is only told to the content scanner: without one, the MTA is
    // asked not to send it (one round trip less per connection).
    if !session.needs_helo() && opts.contains(ProtoOpts::NO_HELO) {
        cx.requested_opts |= ProtoOpts::NO_HELO;
    }
    if !session.needs_headers() && opts.contains(ProtoOpts::NO_HEADER | ProtoOpts::NO_EOH) {
        cx.requested_opts |= ProtoOpts::NO_HEADER | ProtoOpts::NO_EOH;
    }
    // Bodies are read only for the MTA's bounces, while bounce rules exist,
    // and for the content scanner, while content rules and a scanner
    // exist (up to scanner.max_message_size); every other body is skipped
    // after its first chunk (or, where the MTA cannot skip, read and
    // dropped).
    if !session.needs_body() && opts.contains(ProtoOpts::NO_BODY) {
        cx.requested_opts |= ProtoOpts::NO_BODY;
    } else if opts.contains(ProtoOpts::SKIP) {
        cx.requested_opts |= ProtoOpts::SKIP;
    }
    // One list per stage; it replaces the MTA's own list for that stage.
    cx.requested_macros.insert(MacroStage::Mail, c"i {auth_authen}".into());
    for stage in [MacroStage::Rcpt, MacroStage::Data, MacroStage::Eoh, MacroStage::Eom] {
        cx.requested_macros.insert(stage, c"i".into());
    }
    let skip = cx.requested_opts.contains(ProtoOpts::SKIP);
    cx.data = Some(Connection {
        session,
        noreply_header,
        skip,
        decided: Duration::ZERO,
    });
    Status::Continue
}

async fn handle_connect(current: CurrentPolicy, cx: &mut Context<Connection>, socket: SocketInfo) -> Status {
    let conn = connection!(current, cx);
    let client = match socket {
        SocketInfo::Inet(addr) => Some(addr),
        SocketInfo::Unix(_) | SocketInfo::Unknown => None,
    };
    conn.session.connect(client);
    Status::Continue
}

async fn handle_helo(current: CurrentPolicy, cx: &mut Context<Connection>, name: CString) -> Status {
    let conn = connection!(current, cx);
    conn.session.helo(name.as_bytes());
    Status::Continue
}

async fn handle_mail(current: CurrentPolicy, cx: &mut Context<Connection>, args: Vec<CString>) -> Status {
    let queue_id = queue_id(&cx.macros);
    let auth = cx.macros.get(c"{auth_authen}").map(|a| a.to_bytes().to_vec());
    let conn = connection!(current, cx);
    let from = args.first().map_or(&b""[..], |a| a.as_bytes());
    let started = conn.session.reporting().observer.start();
    let verdict = conn.session.mail(from, auth.as_deref(), &queue_id).await;
    // MAIL begins a transaction.
    conn.decided = conn.session.reporting().observer.finish(Stage::Mail, started);
    if let Some(pending) = PendingLock::of(&conn.session, &verdict) {
        pending.written(&queue_id).await;
    }
    answer(&mut cx.reply, verdict)
}

async fn handle_rcpt(current: CurrentPolicy, cx: &mut Context<Connection>, args: Vec<CString>) -> Status {
    let queue_id = queue_id(&cx.macros);
    let conn = connection!(current, cx);
    let rcpt = args.first().map_or(&b""[..], |a| a.as_bytes());
    let started = conn.session.reporting().observer.start();
    let verdict = conn.session.rcpt(rcpt, &queue_id).await;
    conn.decided += conn.session.reporting().observer.finish(Stage::Rcpt, started);
    if let Some(pending) = PendingLock::of(&conn.session, &verdict) {
        pending.written(&queue_id).await;
    }
    answer(&mut cx.reply, verdict)
}

async fn handle_data(current: CurrentPolicy, cx: &mut Context<Connection>) -> Status {
    let queue_id = queue_id(&cx.macros);
    let conn = connection!(current, cx);
    let started = conn.session.reporting().observer.start();
    let verdict = conn.session.data(&queue_id).await;
    // Timed with RCPT: DATA ends the recipients' phase.
    conn.decided += conn.session.reporting().observer.finish(Stage::Rcpt, started);
    if let Some(pending) = PendingLock::of(&conn.session, &verdict) {
        pending.written(&queue_id).await;
    }
    answer(&mut cx.reply, verdict)
}

async fn handle_header(current: CurrentPolicy, cx: &mut Context<Connection>, name: CString, value: CString) -> Status {
    let conn = connection!(current, cx);
    conn.session.header(name.as_bytes(), value.as_bytes());
    if conn.noreply_header {
        Status::Noreply
    } else {
        Status::Continue
    }
}

async fn handle_eoh(current: CurrentPolicy, cx: &mut Context<Connection>) -> Status {
    let queue_id = queue_id(&cx.macros);
    let conn = connection!(current, cx);
    let started = conn.session.reporting().observer.start();
    let verdict = conn.session.eoh(&queue_id).await;
    conn.decided += conn.session.reporting().observer.finish(Stage::Eoh, started);
    if let Some(pending) = PendingLock::of(&conn.session, &verdict) {
        pending.written(&queue_id).await;
    }
    answer(&mut cx.reply, verdict)
}

async fn handle_body(current: CurrentPolicy, cx: &mut Context<Connection>, chunk: bytes::Bytes) -> Status {
    let conn = connection!(current, cx);
    if conn.session.body(&chunk) || !conn.skip {
        Status::Continue
    } else {
        Status::Skip
    }
}

async fn handle_eom(current: CurrentPolicy, cx: &mut EomContext<Connection>) -> Status {
    let queue_id = queue_id(&cx.macros);
    let conn = connection!(current, cx);
    let started = conn.session.reporting().observer.start();
    let verdict = conn.session.eom(&queue_id).await;
    let observer = &conn.session.reporting().observer;
    let decided = conn.decided + observer.finish(Stage::Eom, started);
    observer.message(decided);
    conn.decided = Duration::ZERO;
    let pending = PendingLock::of(&conn.session, &verdict);
    conn.session.abort();
    if let Some(pending) = pending {
        pending.written(&queue_id).await;
    }
    if let Verdict::Hold { reason, fallback } = verdict {
        return match cx.actions.quarantine(reason.as_str()).await {
            Ok(()) => Status::Continue,
            Err(e) => {
                error!(queue_id = %queue_id, "cannot put the message on hold ({e}): rejecting it instead");
                answer(&mut cx.reply, Verdict::Refuse(fallback))
            }
        };
    }
    answer(&mut cx.reply, verdict)
}

async fn handle_abort(cx: &mut Context<Connection>) -> Status {
    let queue_id = queue_id(&cx.macros).into_owned();
    if let Some(conn) = cx.data.as_mut() {
        conn.session.abandon(&queue_id).await;
        conn.decided = Duration::ZERO;
    }
    Status::Continue
}

/// A lock that a verdict enforces and that is not on disk yet.
struct PendingLock {
    identity: String,
    ticket: Ticket,
}

impl PendingLock {
    /// The lock `verdict` enforces, if it is still being written.
    fn of(session: &Session, verdict: &Verdict) -> Option<Self> {
        if *verdict == Verdict::Continue {
            return None;
        }
        let identity = session.enforced_lock()?;
        let ticket = session.policy().lock_durability(identity)?;
        Some(Self {
            identity: identity.to_owned(),
            ticket,
        })
    }

    /// Waits until the lock is on disk, or [`LOCK_WRITE_WAIT`] at most;
    /// logs an error when the reply has to go out before.
    async fn written(self, queue_id: &str) {
        let why = match tokio::time::timeout(LOCK_WRITE_WAIT, self.ticket.wait()).await {
            Ok(Durability::Written) => return,
            Ok(Durability::Failing) => "the lock list cannot be written",
            Err(_) => "the lock list write did not finish in time",
        };
        if let Some(events) = UNWRITTEN_LOG.note() {
            error!(
                queue_id,
                identity = %self.identity,
                wait_s = LOCK_WRITE_WAIT.as_secs(),
                left_out = events - 1,
                "lock enforced before it is on disk ({why}): it is enforced from memory while the writer retries, and a crash now would forget it"
            );
        }
    }
}

/// One "lock enforced before it is on disk" line a second at most: with a
/// failing disk every refusal of a locked identity would log one.
static UNWRITTEN_LOG: Throttle = Throttle::new(Duration::from_secs(1));

/// The queue id (macro `i`) for log lines, borrowed from the macros.
fn queue_id(macros: &Macros) -> Cow<'_, str> {
    macros.get(c"i").map_or(Cow::Borrowed("NONE"), |i| i.to_string_lossy())
}

/// Turns a verdict into a milter status, setting the reply for refusals.
fn answer(reply: &mut SmtpReply, verdict: Verdict) -> Status {
    match verdict {
        Verdict::Continue | Verdict::Hold { .. } => Status::Continue,
        Verdict::Refuse(r) => {
            if let Err(e) = reply.set_error_reply(&r.code, Some(&r.status), [r.text.as_str()]) {
                error!("cannot set the SMTP reply \"{} {} {}\": {e}", r.code, r.status, r.text);
            }
            if r.is_temporary() {
                Status::Tempfail
            } else {
                Status::Reject
            }
        }
    }
}

/// The answer when no decision can be made, per `on_error`.
fn error_status(policy: &Policy, reply: &mut SmtpReply) -> Status {
    match policy.config().on_error {
        ErrorPolicy::Accept => Status::Accept,
        ErrorPolicy::Tempfail => {
            let r = policy.config().replies.error.get_ref();
            let _ = reply.set_error_reply(&r.code, Some(&r.status), [crate::policy::reply::escape(&r.text)]);
            Status::Tempfail
        }
    }
}
