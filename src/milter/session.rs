// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! One MTA connection: turns the SMTP stages the milter sees into policy
//! questions, as early as the identity is known, and into verdicts.
//!
//! Where each refusal happens:
//! - a locked identity known at MAIL: refused at RCPT for every recipient
//!   that is not a support address (at MAIL itself if there are none);
//! - an identity over a message limit: at DATA, when the whole envelope is
//!   known (asked at MAIL): the message's attempt is counted against the
//!   lock rules there, each recipient's at its RCPT, and a client's retry
//!   of an envelope (or recipient) refused with 4xx is told by it and not
//!   counted again (see [`Policy::is_retry`]);
//! - an identity over a recipient limit, or a message over the per-message
//!   recipient cap: at that RCPT, for that recipient only;
//! - an identity known only from a header: after the headers, whole message;
//! - finally, at end of message, the message is counted, unless a limit was
//!   reached meanwhile by a parallel session: then it is refused uncounted.

use super::Reporting;
use super::content::{self, ContentText};
use crate::config::LockedAction;
use crate::config::{Action, IdentitySource, ReplySpec, format_duration};
use crate::locks::file::LockEntry;
use crate::notify::Sample;
use crate::ops::metrics::{RULE_CONFLICT, RULE_HOLD_LIMIT, RULE_LOCKED, RULE_MAX_RECIPIENTS, Refusal};
use crate::policy::bounce::{self, MAX_REPORT_BYTES};
use crate::policy::identity::{self, Facts, HeaderValues, Identity, LocalUser, Resolution};
use crate::policy::locked::{LockedStep, Stage, locked_step};
use crate::policy::reply::{self, Reply, Vars};
use crate::policy::{Demand, Door, Outbound, Plan, Policy, RecipientValue, Trip, most_severe};
use crate::scan;
use crate::users::UserNames;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Largest number of recipients remembered while the identity is pending.
/// Only recipients that could be support addresses are remembered (and at
/// most this many of them); any other recipient, or one past the cap, means
/// the message is not to support addresses only.
const MAX_PENDING_RECIPIENTS: usize = 100;

/// Largest number of recipients of one message whose values are kept for
/// the distinct-recipient rules; the rest of a bigger message counts in the
/// volume rules only (`limits.max_recipients_per_message` is 100 by default).
const MAX_RECIPIENT_VALUES: usize = 1000;

/// Largest number of `From:` domains kept per message for the
/// foreign-sender rules; more make the message foreign.
const MAX_FROM_DOMAINS: usize = 8;

/// What the milter should answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Refuse (the message, or at RCPT the recipient) with this reply.
    Refuse(Reply),
    /// Accept the message into the MTA's hold queue (end of message only),
    /// with the quarantine reason; if the MTA cannot hold it, refuse it
    /// with the reply.
    Hold {
        reason: String,
        fallback: Reply,
    },
}

/// Per-connection state.
pub struct Session {
    policy: Arc<Policy>,
    reporting: Reporting,
    /// The client as the MTA reported it (127.0.0.1 port 0 for Postfix's
    /// local submission).
    client: Option<SocketAddr>,
    /// The client's HELO/EHLO name (bounded), told to the content scanner.
    helo: Option<String>,
    message: Option<Message>,
}

/// The longest HELO name kept for the scanner.
const MAX_HELO: usize = 255;

struct Message {
    /// Why the message is subject to the rules; `None`: inbound mail,
    /// passed untouched at every stage.
    outbound: Option<Outbound>,
    envelope_from: Vec<u8>,
    auth: Option<Vec<u8>>,
    headers: HeaderValues,
    /// Set once the identity is known.
    plan: Option<Plan>,
    /// The account that vouched for the identity, counted beside it (and
    /// its lock enforced): the SASL login that stamped the identity header
    /// (a webmail's own account), or the Unix user that ran the PHP script.
    stamper: Option<Plan>,
    /// The identity's lock, if it is locked.
    lock: Option<Arc<LockEntry>>,
    /// Recipients accepted so far.
    recipients: u32,
    /// Whether every accepted recipient is a support address.
    support_only: bool,
    /// Recipients that could be support addresses, kept while the identity
    /// is pending (bounded).
    pending_recipients: Vec<Vec<u8>>,
    /// A recipient seen while the identity was pending can not be a support
    /// address (or was past the cap).
    pending_not_support: bool,
    /// Envelope and headers (bounded) for an ARF report; only while
    /// `notify.arf_to` is set.
    sample: Option<Sample>,
    /// The accepted recipients' values for the distinct rules (bounded by
    /// [`MAX_RECIPIENT_VALUES`]); only while such rules exist.
    recipient_values: Vec<RecipientValue>,
    /// The domains of the `From:` header, while foreign-sender rules exist
    /// (bounded by [`MAX_FROM_DOMAINS`]); `from_overflow`: there were more.
    from_domains: Vec<String>,
    from_overflow: bool,
    /// Sent as a domain the identity may not use (known at the end of the
    /// headers).
    foreign: bool,
    /// The MTA's own bounce, while bounce rules exist: the message as
    /// received (bounded by [`MAX_REPORT_BYTES`]), to read its report.
    bounce_text: Option<Vec<u8>>,
    /// The message for the content scanner, while content rules apply to
    /// it (see [`ContentText`]).
    content: Option<ContentText>,
    /// The attempt was a client's retry of a transaction refused with 4xx:
    /// its content verdict only asks the throttles, counting nothing.
    retry: bool,
    /// Null-sender mail from the local door: the MTA's own notice (bounce,
    /// delay, postmaster notice) unless it carries the pickup stamp that
    /// Postfix puts on what a local user submits; decided at the end of the
    /// headers (see [`MtaNotice`]).
    notice: MtaNotice,
    /// What the rules said at MAIL, acted on once the envelope is complete
    /// (see [`Decider::settle`]).
    held: Vec<Trip>,
    /// The recipients tried (accepted or refused), each as a retry of it
    /// would present it again (see [`Policy::recipient_retry_value`];
    /// bounded by [`MAX_RECIPIENT_VALUES`]).
    attempted: u32,
    /// Of the recipients tried, those that were a client's retry of a
    /// recipient refused with 4xx: when every one is, the transaction is
    /// the retry of a partly deferred message (the rest of its recipients
    /// were accepted before), not a new attempt.
    retried: u32,
    recipient_keys: Vec<u64>,
    /// The envelope so far (see [`Policy::envelope_value`]).
    envelope: u64,
    /// The attempt has been counted (at DATA, or at the end of the headers
    /// or of the message where the MTA sends no DATA).
    settled: bool,
    /// Copies of an identity header that a source before the one that
    /// decided would have read, had the client (or its login) been trusted
    /// to set it: logged once at the end of the headers.
    ignored_header: Option<(String, u32)>,
}

impl Message {
    /// The whole message as the rules see it, once its headers are in.
    fn whole(&self, policy: &Policy, client: Option<SocketAddr>) -> Demand<'_> {
        Demand {
            messages: 1,
            recipients: self.recipients,
            recipient_values: &self.recipient_values,
            client: client.and_then(|c| policy.client_value(c.ip())),
            foreign: self.foreign,
            ..Demand::default()
        }
    }

    /// Whether it is sent as a domain `identity` may not use (by its
    /// envelope sender or its `From:`; more `From:` addresses than are kept
    /// count as foreign).
    fn sent_as_foreign(&self, policy: &Policy, identity: &Identity) -> bool {
        policy.is_foreign_sender(identity, &self.envelope_from, &self.from_domains)
            || (self.from_overflow && policy.counts_foreign_senders())
    }
}

/// Whether null-sender mail from the local door is the MTA's own notice.
/// Only asked where Postfix stamps local submissions
/// ([`Policy::local_door_stamped`]): without the stamp, the two look the
/// same to a milter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MtaNotice {
    /// Not null-sender mail from a stamped local door (or `count_bounces`).
    No,
    /// Until the end of the headers.
    Pending,
    /// No stamp: the MTA wrote it.
    Unstamped,
    /// The stamp: a local user submitted it with the sendmail command.
    Stamped,
}

impl Session {
    pub fn new(policy: Arc<Policy>, reporting: Reporting) -> Self {
        Self {
            policy,
            reporting,
            client: None,
            helo: None,
            message: None,
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn reporting(&self) -> &Reporting {
        &self.reporting
    }

    /// Whether any identity source reads headers, or ARF reports need a
    /// sample message's headers.
    pub fn needs_headers(&self) -> bool {
        header_sources(&self.policy).next().is_some()
            || self.policy.config().notify.arf_enabled()
            || self.policy.counts_foreign_senders()
            || self.policy.counts_bounces()
            || self.policy.scans()
    }

    /// Whether message bodies are read: those of the MTA's own bounces,
    /// while bounce rules exist, and outbound messages, while a scanner and
    /// content rules exist (up to `scanner.max_message_size`).
    pub fn needs_body(&self) -> bool {
        self.policy.counts_bounces() || self.policy.scans()
    }

    /// Whether the HELO name is wanted: only for the content scanner.
    pub fn needs_helo(&self) -> bool {
        self.policy.scans()
    }

    pub fn connect(&mut self, client: Option<SocketAddr>) {
        self.client = client;
    }

    /// HELO/EHLO: the name is told to the content scanner.
    pub fn helo(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(&name[..name.len().min(MAX_HELO)]);
        self.helo = Some(name.into_owned());
    }

    /// MAIL FROM. `auth` is the `{auth_authen}` macro.
    pub async fn mail(&mut self, from: &[u8], auth: Option<&[u8]>, queue_id: &str) -> Verdict {
        self.reporting.observer.seen();
        let auth = auth.filter(|a| !a.is_empty());
        let outbound = self.policy.outbound(auth.is_some(), self.client);
        let sample = (outbound.is_some() && self.policy.config().notify.arf_enabled())
            .then(|| Sample::new(from, self.client.map(|c| c.ip()), std::time::SystemTime::now()));
        let bounce = identity::is_null_sender(from);
        // The MTA's own bounces come in through the local door, with the
        // null sender; their report is read at the end (see `eom`).
        let local_null = bounce && Door::of(self.client) == Door::LocalSubmission && self.policy.local_door_stamped();
        let bounce_text = (local_null && self.policy.counts_bounces()).then(Vec::new);
        let notice = if local_null && !self.policy.config().limits.count_bounces {
            MtaNotice::Pending
        } else {
            MtaNotice::No
        };
        let content = (outbound.is_some() && self.policy.scans()).then(ContentText::default);
        let message = self.message.insert(Message {
            outbound,
            envelope_from: from.to_vec(),
            auth: auth.map(<[u8]>::to_vec),
            headers: HeaderValues::default(),
            plan: None,
            stamper: None,
            lock: None,
            recipients: 0,
            support_only: true,
            pending_recipients: Vec::new(),
            pending_not_support: false,
            sample,
            recipient_values: Vec::new(),
            from_domains: Vec::new(),
            from_overflow: false,
            foreign: false,
            bounce_text,
            content,
            retry: false,
            notice,
            held: Vec::new(),
            attempted: 0,
            retried: 0,
            recipient_keys: Vec::new(),
            envelope: 0,
            settled: false,
            ignored_header: None,
        });
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        if outbound.is_none() {
            cx.reporting.observer.out_of_scope();
            debug!(queue_id, client = ?self.client, "not outbound mail ([scope]): passed untouched");
            return Verdict::Continue;
        }
        if message.notice == MtaNotice::Pending {
            // Who wrote it is known only from its headers.
            return Verdict::Continue;
        }
        let facts = Facts {
            auth: message.auth.as_deref(),
            envelope_from: Some(&message.envelope_from),
            client_ip: self.client.map(|c| c.ip()),
            headers: None,
            door: Door::of(self.client),
            queue_id: Some(queue_id),
            local_user: None,
        };
        let identity = match cx.resolve(&facts) {
            Resolution::Resolved(id) => id,
            Resolution::Unidentified => unidentified(),
            Resolution::Pending | Resolution::Conflict { .. } => return Verdict::Continue,
        };
        let uncounted = cx.policy.bounce_uncounted(&identity, bounce, Door::of(self.client));
        let plan = message.plan.insert(cx.policy.plan(identity, uncounted));
        if !cx.policy.scans_for(plan) {
            message.content = None;
        }
        message.lock = cx.lock_in_force(plan, self.client.map(|c| c.ip()));
        if message.lock.is_some() {
            return cx.locked(message, Stage::Mail, false);
        }
        // Asked now, acted on at DATA: an attempt is counted (and a
        // throttle refuses it) once its envelope tells whether it is a
        // client's retry.
        let demand = Demand {
            messages: 1,
            client: self.client.and_then(|c| cx.policy.client_value(c.ip())),
            ..Demand::default()
        };
        message.held = cx.policy.check(&[plan], &Demand::default(), &demand).await;
        Verdict::Continue
    }

    /// RCPT TO.
    pub async fn rcpt(&mut self, rcpt: &[u8], queue_id: &str) -> Verdict {
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some()) else {
            return Verdict::Continue;
        };
        if let Some(sample) = message.sample.as_mut() {
            sample.recipient(rcpt);
        }
        let cap = cx.policy.config().limits.max_recipients_per_message;
        if cap > 0 && message.recipients >= cap {
            return cx.too_many_recipients(message, rcpt, cap);
        }
        let value = (cx.policy.counts_distinct_recipients() && message.recipient_values.len() < MAX_RECIPIENT_VALUES)
            .then(|| cx.policy.recipient_value(rcpt));
        message.attempted += 1;
        // Retries are told apart only while a lock rule exists (the policy
        // of a session never changes under it).
        let retry_key = cx.policy.remembers_retries().then(|| {
            message.envelope = cx.policy.envelope_value(&message.envelope_from, message.envelope, rcpt);
            cx.policy.recipient_retry_value(&message.envelope_from, rcpt)
        });
        if let Some(key) = retry_key
            && message.recipient_keys.len() < MAX_RECIPIENT_VALUES
        {
            message.recipient_keys.push(key);
        }
        let Some(plan) = &message.plan else {
            // Identity pending until the headers: remember what is needed to
            // tell, should it be locked, whether it writes to support only.
            if message.pending_recipients.len() < MAX_PENDING_RECIPIENTS && cx.policy.may_be_support_address(rcpt) {
                message.pending_recipients.push(rcpt.to_vec());
            } else {
                message.pending_not_support = true;
            }
            message.recipients += 1;
            message.recipient_values.extend(value);
            if let Some(content) = message.content.as_mut() {
                content.recipient(rcpt, MAX_RECIPIENT_VALUES);
            }
            return Verdict::Continue;
        };
        if message.lock.is_some() {
            let support = cx.policy.may_write_while_locked(&plan.identity, rcpt);
            let verdict = cx.locked(message, Stage::Rcpt, support);
            if verdict == Verdict::Continue {
                message.support_only &= support;
                message.recipients += 1;
            }
            return verdict;
        }
        // The recipient's attempt counts against the lock rules, unless a
        // client retries it after a 4xx (the message's own attempt is
        // counted at DATA, see `data`).
        let this: Vec<RecipientValue> = value.into_iter().collect();
        let with_this: Vec<RecipientValue> = message.recipient_values.iter().chain(&this).copied().collect();
        let attempt = if retry_key.is_some_and(|key| cx.policy.is_retry(plan, key)) {
            message.retried += 1;
            Demand::default()
        } else {
            Demand {
                recipients: 1,
                recipient_values: &this,
                ..Demand::default()
            }
        };
        let peek = Demand {
            recipients: message.recipients + 1,
            recipient_values: &with_this,
            ..Demand::default()
        };
        let trips = cx.policy.check(&[plan], &attempt, &peek).await;
        let verdict = cx.act(message, trips, Stage::Rcpt);
        if let (Verdict::Refuse(reply), Some(plan), Some(key)) = (&verdict, &message.plan, retry_key)
            && reply.is_temporary()
        {
            cx.policy.remember_deferred(plan, &[key]);
        }
        if verdict == Verdict::Continue {
            message.recipients += 1;
            message.support_only = false;
            message.recipient_values.extend(this);
            if let Some(content) = message.content.as_mut() {
                content.recipient(rcpt, MAX_RECIPIENT_VALUES);
            }
        }
        verdict
    }

    /// One header; only identity headers are kept, the sample's, the
    /// `From:` domains for the foreign-sender rules, and a bounce's.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let policy = &self.policy;
        if let Some(sample) = self.message.as_mut().and_then(|m| m.sample.as_mut()) {
            sample.header(name, value);
        }
        if let Some(text) = self.message.as_mut().and_then(|m| m.bounce_text.as_mut()) {
            append_bounded(text, &[name, b": ", value, b"\r\n"]);
        }
        let limit = policy.config().scanner.max_message_size;
        if let Some(content) = self.message.as_mut().and_then(|m| m.content.as_mut()) {
            content.append(&[name, b": ", value, b"\r\n"], limit);
        }
        if let Some(message) = self.message.as_mut()
            && message.outbound.is_some()
            && name.eq_ignore_ascii_case(b"From")
            && policy.counts_foreign_senders()
        {
            for domain in from_domains(value) {
                if message.from_domains.len() < MAX_FROM_DOMAINS {
                    message.from_domains.push(domain);
                } else {
                    message.from_overflow = true;
                }
            }
        }
        let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some()) else {
            return;
        };
        let sources = policy.config().identity.sources.get_ref();
        match &message.plan {
            None => {
                let identity = &policy.config().identity;
                message.headers.record(sources, name, value, identity.max_length);
            }
            Some(plan) => {
                // Decided at MAIL by a later source: an identity header of
                // an earlier one came from a client or login not trusted to
                // set it (else the identity would have waited for it).
                let decided = sources.iter().position(|s| *s == plan.identity.source);
                let earlier = sources[..decided.unwrap_or(sources.len())]
                    .iter()
                    .find(|s| matches!(s, IdentitySource::Header(h) if h.as_bytes().eq_ignore_ascii_case(name)));
                if let Some(IdentitySource::Header(h)) = earlier {
                    let (_, n) = message.ignored_header.get_or_insert_with(|| (h.clone(), 0));
                    *n = n.saturating_add(1);
                }
            }
        }
    }

    /// End of headers: resolves a header identity and checks the whole message.
    pub async fn eoh(&mut self, queue_id: &str) -> Verdict {
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some()) else {
            return Verdict::Continue;
        };
        if let Some(text) = message.bounce_text.as_mut() {
            append_bounded(text, &[b"\r\n"]);
        }
        let limit = cx.policy.config().scanner.max_message_size;
        if let Some(content) = message.content.as_mut() {
            content.append(&[b"\r\n"], limit);
        }
        if message.notice == MtaNotice::Pending {
            message.notice = if message.headers.is_stamped(Some(queue_id)) {
                // A local user's: its body is not read.
                message.bounce_text = None;
                MtaNotice::Stamped
            } else {
                MtaNotice::Unstamped
            };
        }
        if message.notice == MtaNotice::Unstamped {
            // The MTA's own bounce or notice: never counted, never refused
            // (refusing it would lose the news of a failed delivery). Its
            // report, if any, is read at the end of the message.
            debug!(queue_id, "the MTA's own null-sender notice: passed untouched");
            message.outbound = None;
            message.content = None;
            return Verdict::Continue;
        }
        if let (Some((header, copies)), Some(plan)) = (message.ignored_header.take(), &message.plan) {
            warn!(
                queue_id,
                source = %IdentitySource::Header(header),
                identity = %plan.identity,
                "identity source skipped: {copies} copies from a client or login not trusted to set it ignored"
            );
        }
        if message.plan.is_some() && !message.settled && message.lock.is_none() {
            // An MTA that sends no DATA (Postfix's cleanup for local
            // submissions): the attempt is counted here.
            let verdict = cx.settle(message, self.client, Stage::Eoh).await;
            if verdict != Verdict::Continue {
                return verdict;
            }
        }
        if let Some(plan) = &message.plan {
            // Known since MAIL: only the foreign-sender rules are left to ask.
            message.foreign = message.sent_as_foreign(cx.policy, &plan.identity);
            if message.lock.is_some() || !message.foreign {
                return Verdict::Continue;
            }
            let demand = Demand {
                foreign: true,
                ..Demand::default()
            };
            let trips = cx.policy.check(&[plan], &demand, &demand).await;
            return cx.act(message, trips, Stage::Eoh);
        }
        let mut facts = Facts {
            auth: message.auth.as_deref(),
            envelope_from: Some(&message.envelope_from),
            client_ip: self.client.map(|c| c.ip()),
            headers: Some(&message.headers),
            door: Door::of(self.client),
            queue_id: Some(queue_id),
            local_user: None,
        };
        let local_user = cx.local_user(&facts).await;
        facts.local_user = local_user.as_ref();
        let identity = match cx.resolve(&facts) {
            Resolution::Resolved(id) => id,
            Resolution::Unidentified | Resolution::Pending => unidentified(),
            Resolution::Conflict { header } => return cx.conflicting_headers(&header),
        };
        // A header stamped by a webmail's login: the login is counted too,
        // so a compromised webmail still trips its own rules. Likewise the
        // Unix user of a PHP script: a script that renames itself still
        // counts against its user, and a locked user locks all its scripts.
        let stamper = match identity.source {
            IdentitySource::Header(_) => identity::stamping_login(&cx.policy.config().identity, &facts),
            IdentitySource::PhpScript => identity::user_of_script(&facts),
            _ => None,
        }
        .map(|voucher| cx.policy.plan(voucher, false));
        let pending = std::mem::take(&mut message.pending_recipients);
        let uncounted = cx.policy.bounce_uncounted(
            &identity,
            identity::is_null_sender(&message.envelope_from),
            Door::of(self.client),
        );
        let mut plan = cx.policy.plan(identity, uncounted);
        let client = self.client.map(|c| c.ip());
        let mut lock = cx.lock_in_force(&plan, client);
        if let (None, Some(login)) = (&lock, stamper) {
            match cx.lock_in_force(&login, client) {
                // The stamping login itself is locked: so is all it submits.
                Some(login_lock) => {
                    lock = Some(login_lock);
                    plan = login;
                }
                None => message.stamper = Some(login),
            }
        }
        message.foreign = message.sent_as_foreign(cx.policy, &plan.identity);
        if !cx.policy.scans_for(&plan) && !message.stamper.as_ref().is_some_and(|l| cx.policy.scans_for(l)) {
            message.content = None;
        }
        let plan = message.plan.insert(plan);
        message.lock = lock;
        if message.lock.is_some() {
            message.support_only = !message.pending_not_support
                && pending
                    .iter()
                    .all(|r| cx.policy.may_write_while_locked(&plan.identity, r));
            return cx.locked(message, Stage::Eoh, message.support_only);
        }
        let Some(plan) = &message.plan else {
            return Verdict::Continue;
        };
        let plans: Vec<&Plan> = std::iter::once(plan).chain(message.stamper.as_ref()).collect();
        let demand = message.whole(cx.policy, self.client);
        // A client's retry of an envelope refused with 4xx is not a new
        // attempt.
        let retry = cx.policy.is_retry(plan, message.envelope);
        let attempt = if retry { Demand::default() } else { demand };
        let trips = cx.policy.check(&plans, &attempt, &demand).await;
        message.retry = retry;
        message.support_only = false;
        message.settled = true;
        let verdict = cx.act(message, trips, Stage::Eoh);
        cx.remember_if_deferred(message, &verdict);
        verdict
    }

    /// A chunk of the body; returns whether more is wanted: the MTA's
    /// bounces are read up to [`MAX_REPORT_BYTES`], messages for the
    /// content scanner up to `scanner.max_message_size`.
    pub fn body(&mut self, chunk: &[u8]) -> bool {
        let limit = self.policy.config().scanner.max_message_size;
        let Some(message) = self.message.as_mut() else {
            return false;
        };
        let mut more = false;
        if let Some(text) = message.bounce_text.as_mut() {
            append_bounded(text, &[chunk]);
            more |= text.len() < MAX_REPORT_BYTES;
        }
        if let Some(content) = message.content.as_mut() {
            more |= content.append(&[chunk], limit);
        }
        more
    }

    /// End of message: hold a locked identity's mail, or count the message.
    pub async fn eom(&mut self, queue_id: &str) -> Verdict {
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        if let Some(message) = self.message.as_mut()
            && let Some(text) = message.bounce_text.take()
            && message.notice == MtaNotice::Unstamped
        {
            cx.charge_bounce(&text).await;
        }
        let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some()) else {
            return Verdict::Continue;
        };
        if message.plan.is_none() {
            // No MAIL or identity seen: nothing to count.
            return Verdict::Continue;
        }
        if message.lock.is_some() {
            return cx.locked(message, Stage::Eom, message.support_only);
        }
        if !message.settled {
            // No DATA and no headers: the attempt is counted here.
            let verdict = cx.settle(message, self.client, Stage::Eom).await;
            if verdict != Verdict::Continue || message.lock.is_some() {
                return verdict;
            }
        }
        // A parallel session may have locked the identity (or the login
        // that stamped it) since this one's MAIL: no message is accepted
        // once its identity is locked.
        if let Some(verdict) = cx.locked_meanwhile(message, self.client) {
            return verdict;
        }
        // The content rules: the scanner's verdict is counted (and acted
        // on) before the message is, whatever becomes of it.
        let scanned = message.content.is_some();
        if let Some(verdict) = cx.scan(message, self.client, self.helo.as_deref()).await {
            return verdict;
        }
        // Once more after a scan, which may have waited for seconds.
        if scanned
            && message.lock.is_none()
            && let Some(verdict) = cx.locked_meanwhile(message, self.client)
        {
            return verdict;
        }
        let Some(plan) = &message.plan else {
            return Verdict::Continue;
        };
        let plans: Vec<&Plan> = std::iter::once(plan).chain(message.stamper.as_ref()).collect();
        let demand = message.whole(cx.policy, self.client);
        let trips = cx.policy.commit_all(&plans, &demand).await;
        let verdict = cx.act(message, trips, Stage::Eom);
        // A limit a parallel session reached meanwhile refuses the message
        // here with 4xx: the client's retry of it is a retry, as after a
        // refusal at any earlier stage.
        cx.remember_if_deferred(message, &verdict);
        if verdict == Verdict::Continue
            && let Some(plan) = &message.plan
        {
            cx.policy.record_sent(queue_id, &plan.identity);
            info!(
                queue_id,
                identity = %plan.identity,
                source = %plan.identity.source,
                recipients = message.recipients,
                action = "accept",
                "accepted"
            );
            cx.reporting
                .observer
                .accepted(&plan.identity.value, message.recipients, queue_id);
            cx.reporting.accepted_sample(
                cx.policy.config(),
                &plan.identity.value,
                message.sample.take(),
                queue_id,
            );
        }
        verdict
    }

    /// The identity whose lock the current message is under, if it is
    /// locked: a verdict other than [`Verdict::Continue`] then enforces that
    /// lock (a refusal as locked, a hold, the refusal of the message that
    /// tripped it), and the callback sends it only once the lock is on disk.
    pub fn enforced_lock(&self) -> Option<&str> {
        self.message.as_ref()?.lock.as_ref().map(|l| l.identity.as_str())
    }

    /// DATA: every recipient is known. The attempt is counted against the
    /// lock rules, unless it is a client's retry of an envelope refused
    /// with 4xx, and what the rules said at MAIL is acted on.
    pub async fn data(&mut self, queue_id: &str) -> Verdict {
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some()) else {
            return Verdict::Continue;
        };
        if message.plan.is_none() || message.settled || message.lock.is_some() {
            return Verdict::Continue;
        }
        cx.settle(message, self.client, Stage::Data).await
    }

    /// The message is over: forget it.
    pub fn abort(&mut self) {
        self.message = None;
    }

    /// The client gave up before DATA (RSET, QUIT, or every recipient
    /// refused): its attempt still counts against the lock rules, which may
    /// lock it; nothing else is done.
    pub async fn abandon(&mut self, queue_id: &str) {
        let cx = Decider::new(&self.policy, &self.reporting, queue_id);
        if let Some(message) = self.message.as_mut().filter(|m| m.outbound.is_some())
            && message.plan.is_some()
            && !message.settled
            && message.lock.is_none()
            && message.attempted > 0
        {
            cx.count_abandoned(message, self.client).await;
        }
        self.message = None;
    }
}

/// One stage's decision: the policy snapshot, where to report, the queue id.
struct Decider<'a> {
    policy: &'a Policy,
    reporting: &'a Reporting,
    queue_id: &'a str,
}

impl<'a> Decider<'a> {
    fn new(policy: &'a Policy, reporting: &'a Reporting, queue_id: &'a str) -> Self {
        Self {
            policy,
            reporting,
            queue_id,
        }
    }

    /// Counts a transaction's attempt against the lock rules (as nothing if
    /// it is a retry of an envelope refused with 4xx) and acts on that and
    /// on what the rules said at MAIL; remembers the envelope when the
    /// verdict is a 4xx.
    async fn settle(&self, message: &mut Message, client: Option<SocketAddr>, stage: Stage) -> Verdict {
        message.settled = true;
        let mut trips = std::mem::take(&mut message.held);
        if let Some(plan) = &message.plan {
            match self.message_attempt(plan, message, client) {
                Some(attempt) => trips.extend(self.policy.check(&[plan], &attempt, &Demand::default()).await),
                None => message.retry = true,
            }
        }
        let verdict = self.act(message, trips, stage);
        self.remember_if_deferred(message, &verdict);
        verdict
    }

    /// One message's attempt, as the lock rules count it; `None` if it is a
    /// client's retry of an envelope refused with 4xx, or of recipients
    /// each refused with 4xx before (the rest of a message accepted for its
    /// other recipients): not counted again.
    fn message_attempt(&self, plan: &Plan, message: &Message, client: Option<SocketAddr>) -> Option<Demand<'static>> {
        if message.attempted > 0 && message.retried == message.attempted {
            debug!(queue_id = self.queue_id, identity = %plan.identity, "a retry of recipients refused with 4xx: not counted again");
            return None;
        }
        if self.policy.is_retry(plan, message.envelope) {
            debug!(queue_id = self.queue_id, identity = %plan.identity, "a retry of an envelope refused with 4xx: not counted again");
            return None;
        }
        Some(Demand {
            messages: 1,
            client: client.and_then(|c| self.policy.client_value(c.ip())),
            ..Demand::default()
        })
    }

    /// The lock a parallel session (or an admin) put on the message's
    /// identity, or on the login that stamped it, after this session last
    /// looked: the message is then acted on as locked at its end.
    fn locked_meanwhile(&self, message: &mut Message, client: Option<SocketAddr>) -> Option<Verdict> {
        if !self.policy.enforcing() {
            // Dry run: the lock was logged as not enforced at MAIL.
            return None;
        }
        let client = client.map(|c| c.ip());
        let plan = message.plan.as_ref()?;
        if let Some(lock) = self.lock_in_force(plan, client) {
            message.lock = Some(lock);
        } else if let Some(login) = &message.stamper
            && let Some(lock) = self.lock_in_force(login, client)
        {
            message.lock = Some(lock);
            message.plan = message.stamper.take();
        } else {
            return None;
        }
        let identity = message.plan.as_ref().map_or("unknown", |p| p.identity.value.as_str());
        info!(queue_id = self.queue_id, identity = %identity, "locked while its message was in transit");
        Some(self.locked(message, Stage::Eom, message.support_only))
    }

    /// A 4xx refusal of a whole transaction: its envelope and recipients
    /// are remembered, so that the client's retry of it is not counted as a
    /// new attempt.
    fn remember_if_deferred(&self, message: &Message, verdict: &Verdict) {
        if let (Verdict::Refuse(reply), Some(plan)) = (verdict, &message.plan)
            && reply.is_temporary()
        {
            let mut keys = message.recipient_keys.clone();
            keys.push(message.envelope);
            self.policy.remember_deferred(plan, &keys);
        }
    }

    /// Asks the content scanner for its verdict on the message, counts it
    /// against the content rules and acts on what they say. The message
    /// passes unscanned, counted nowhere, when it is over
    /// `scanner.max_message_size` or the scanner fails (loudly: see
    /// [`content::Asked::verdict`]).
    /// A client's retry of a message refused with 4xx is scanned again but
    /// only asks the throttles: a false positive retried by a customer's
    /// MTA is not counted again, and spam that was throttled is not let
    /// through on its retry.
    async fn scan(&self, message: &mut Message, client: Option<SocketAddr>, helo: Option<&str>) -> Option<Verdict> {
        let text = message.content.take()?;
        let plan = message.plan.as_ref()?;
        let envelope = scan::Envelope {
            from: &message.envelope_from,
            rcpts: &text.rcpts,
            ip: client.map(|c| c.ip()),
            user: message.auth.as_deref(),
            queue_id: self.queue_id,
            helo,
        };
        let asked = content::Asked {
            scanner: &self.policy.config().scanner,
            stats: self.reporting.observer.scanner(),
            identity: &plan.identity,
            retry: message.retry,
        };
        let verdict = asked.verdict(&envelope, text.text, text.over).await?;
        if verdict.is_clean() {
            return None;
        }
        let plans: Vec<&Plan> = std::iter::once(plan).chain(message.stamper.as_ref()).collect();
        let trips = self.policy.check_content(&plans, verdict, !message.retry).await;
        let verdict = self.act(message, trips, Stage::Eom);
        self.remember_if_deferred(message, &verdict);
        (verdict != Verdict::Continue).then_some(verdict)
    }

    /// A transaction given up before DATA: its attempt counts; a lock rule
    /// it trips locks the identity (nothing is left to refuse).
    async fn count_abandoned(&self, message: &mut Message, client: Option<SocketAddr>) {
        message.settled = true;
        let Some(plan) = &message.plan else {
            return;
        };
        let Some(attempt) = self.message_attempt(plan, message, client) else {
            return;
        };
        let trips = self.policy.check(&[plan], &attempt, &Demand::default()).await;
        if let Some(worst) = most_severe(&trips).filter(|t| t.action == Action::Lock)
            && self.policy.enforcing()
        {
            let worst = worst.clone();
            self.lock(message, &worst, Stage::Rcpt);
        }
    }

    /// Reads the report of one of the MTA's bounces and charges its failed
    /// recipients to the identity that sent the message it reports. Only a
    /// bounce the MTA made itself is believed (the caller knows): one that
    /// came in with the sendmail command (a local user's, with the pickup
    /// stamp) or over SMTP names whatever its author chose.
    async fn charge_bounce(&self, text: &[u8]) {
        let Some(report) = bounce::parse(text) else {
            debug!(
                queue_id = self.queue_id,
                "bounce without failed recipients or queue id: nothing to charge"
            );
            return;
        };
        let Some(identity) = self.policy.sender_of(&report.queue_id) else {
            info!(queue_id = self.queue_id, bounced = %report.queue_id, failed = report.failed, "bounce of a message this milter did not count (or forgot): charged to no one");
            self.reporting.observer.bounce(None, report.failed);
            return;
        };
        self.reporting.observer.bounce(Some(&identity.value), report.failed);
        let plan = self.policy.plan(identity, false);
        let trips = self.policy.charge_bounces(&plan, &report).await;
        info!(queue_id = self.queue_id, identity = %plan.identity, bounced = %report.queue_id, failed = report.failed, "bounce charged");
        for trip in trips.iter().filter(|t| t.dry_run) {
            self.not_enforced(&plan.identity, trip, Stage::Eom, "");
        }
        let Some(worst) = most_severe(&trips) else {
            return;
        };
        if worst.action != Action::Lock || !self.policy.enforcing() {
            // A throttle refuses the identity's next messages while it
            // stays over the rule (asked at MAIL); nothing to do now.
            if worst.action == Action::Log || !self.policy.enforcing() {
                self.not_enforced(&plan.identity, worst, Stage::Eom, "");
            } else {
                info!(queue_id = self.queue_id, identity = %plan.identity, rule = %worst.rule, count = worst.usage.used, limit = worst.usage.limit, "bounce rule exceeded: the identity's next messages are refused");
            }
            return;
        }
        let Some(lock) = self.policy.auto_lock(&plan.identity, worst, &report.queue_id) else {
            return;
        };
        if lock.fresh {
            warn!(queue_id = self.queue_id, identity = %plan.identity, source = %plan.identity.source, rule = %worst.rule, count = worst.usage.used, limit = worst.usage.limit, window = %format_duration(worst.rate.window), "identity locked");
        }
        self.reporting.new_lock(
            self.policy.config(),
            &lock,
            &plan.identity,
            worst,
            &report.queue_id,
            None,
        );
    }

    /// The Unix user that submitted a local message, with its name, if a
    /// local-submission source is configured and Postfix's stamp names one.
    async fn local_user(&self, facts: &Facts<'_>) -> Option<LocalUser> {
        let wanted = self
            .policy
            .config()
            .identity
            .sources
            .get_ref()
            .iter()
            .any(|s| matches!(s, IdentitySource::LocalUser | IdentitySource::PhpScript));
        let uid = identity::stamped_uid(facts).filter(|_| wanted)?;
        let name = UserNames::system().name_of(uid).await;
        if let Err(e) = &name {
            warn!(queue_id = self.queue_id, uid, "local user's name unknown: {e}");
        }
        Some(LocalUser { uid, name })
    }

    fn resolve(&self, facts: &Facts<'_>) -> Resolution {
        let (resolution, skipped) = identity::resolve(&self.policy.config().identity, facts);
        for s in skipped {
            warn!(queue_id = self.queue_id, source = %s.source, "identity source skipped: {}", s.why);
        }
        resolution
    }

    /// The identity's lock, if it is to be enforced. In dry-run mode a lock
    /// is only logged: nothing is refused, locks included.
    fn lock_in_force(&self, plan: &Plan, client: Option<IpAddr>) -> Option<Arc<LockEntry>> {
        let lock = self.policy.lock_of_message(&plan.identity.value, client)?;
        if self.policy.enforcing() {
            return Some(lock);
        }
        info!(
            queue_id = self.queue_id,
            identity = %plan.identity,
            source = %plan.identity.source,
            "identity is locked, would refuse [dry run, not done]"
        );
        self.reporting.observer.not_enforced(RULE_LOCKED, Action::Reject);
        None
    }

    /// Acts for a locked identity at `stage` (see [`locked_step`]).
    fn locked(&self, message: &Message, stage: Stage, support: bool) -> Verdict {
        let locks = &self.policy.config().locks;
        let has_exceptions = !locks.allow_recipients.is_empty();
        let mut action = locks.locked_action;
        let mut hold_full = false;
        if action == LockedAction::Hold
            && let Some(plan) = &message.plan
            && !self.policy.hold_room(&plan.identity.value)
        {
            // Enough of its mail is held as evidence: refuse the rest, so
            // that a bot that sees 250 cannot fill the hold queue.
            action = LockedAction::Reject;
            hold_full = true;
        }
        match locked_step(stage, action, support, has_exceptions) {
            LockedStep::Continue => Verdict::Continue,
            LockedStep::Refuse if hold_full => self.refuse_hold_full(message, stage),
            LockedStep::Refuse if stage == Stage::Eom => self.refuse_locked_message(message),
            LockedStep::Refuse => self.refuse_locked(message, stage),
            LockedStep::Hold => self.hold(message),
            LockedStep::DeliverToSupport => {
                let Some(plan) = &message.plan else {
                    return Verdict::Continue;
                };
                info!(queue_id = self.queue_id, identity = %plan.identity, recipients = message.recipients, "accepted: locked identity writing to support addresses only (not counted)");
                self.reporting
                    .observer
                    .accepted(&plan.identity.value, message.recipients, self.queue_id);
                Verdict::Continue
            }
        }
    }

    /// Acts on the rules a message or recipient would exceed.
    fn act(&self, message: &mut Message, trips: Vec<Trip>, stage: Stage) -> Verdict {
        for trip in trips.iter().filter(|t| t.dry_run) {
            if let Some(plan) = owner(message, trip) {
                self.not_enforced(&plan.identity, trip, stage, "");
            }
        }
        let Some(worst) = most_severe(&trips) else {
            return Verdict::Continue;
        };
        let Some(plan) = owner(message, worst) else {
            return Verdict::Continue;
        };
        let others: Vec<&str> = trips
            .iter()
            .filter(|t| t.rule != worst.rule)
            .map(|t| t.rule.as_str())
            .collect();
        let others = others.join(",");
        if worst.action == Action::Log || !self.policy.enforcing() {
            self.not_enforced(&plan.identity, worst, stage, &others);
            return Verdict::Continue;
        }
        let vars = Vars {
            identity: &plan.identity.value,
            trip: Some(worst),
            ..Vars::default()
        };
        let replies = &self.policy.config().replies;
        let reply = match worst.action {
            Action::Log => return Verdict::Continue,
            Action::Lock => return self.lock(message, worst, stage),
            Action::Tempfail => {
                self.log_refusal("refused temporarily", message, worst, stage, &others);
                reply::render(replies.tempfail.get_ref(), &vars)
            }
            Action::Reject => {
                self.log_refusal("rejected", message, worst, stage, &others);
                reply::render(replies.reject.get_ref(), &vars)
            }
        };
        self.refuse(Some(&plan.identity.value), &worst.rule, reply)
    }

    /// A rule exceeded but not enforced: `action = "log"`, dry-run mode,
    /// or a rule's own `dry_run`.
    fn not_enforced(&self, identity: &Identity, worst: &Trip, stage: Stage, others: &str) {
        let what = if worst.action == Action::Log && !worst.dry_run {
            "limit exceeded (action log: nothing refused)".to_string()
        } else {
            format!("limit exceeded, would {} [dry run, not done]", worst.action)
        };
        info!(
            queue_id = self.queue_id,
            identity = %identity,
            source = %identity.source,
            stage = %stage,
            rule = %worst.rule,
            key = %worst.key,
            count = worst.usage.used,
            limit = worst.usage.limit,
            window = %format_duration(worst.rate.window),
            also = %others,
            "{what}"
        );
        self.reporting.observer.not_enforced(&worst.rule, worst.action);
    }

    fn log_refusal(&self, verb: &str, message: &Message, worst: &Trip, stage: Stage, others: &str) {
        let plan = owner(message, worst);
        let identity = plan.map_or("unknown", |p| p.identity.value.as_str());
        let source = plan.map(|p| p.identity.source.to_string());
        let retry_in = worst.retry_in.map_or_else(|| "never".to_string(), format_duration);
        info!(
            queue_id = self.queue_id,
            identity = %identity,
            source = %source.unwrap_or_default(),
            stage = %stage,
            recipients = message.recipients,
            rule = %worst.rule,
            key = %worst.key,
            count = worst.usage.used,
            requested = worst.requested,
            limit = worst.usage.limit,
            window = %format_duration(worst.rate.window),
            reset_in = %format_duration(worst.usage.reset_in),
            retry_in = %retry_in,
            also = %others,
            action = %worst.action,
            "{verb}"
        )
    }

    /// A lock rule tripped: lock the identity and act as for a locked one.
    fn lock(&self, message: &mut Message, worst: &Trip, stage: Stage) -> Verdict {
        // The stamping login tripped its own rule: it is what gets locked,
        // and from now on the message is its.
        if let Some(login) = message.stamper.take_if(|l| owns(l, worst)) {
            message.plan = Some(login);
        }
        message.stamper = None;
        let Some(plan) = &message.plan else {
            return Verdict::Continue;
        };
        let identity = &plan.identity;
        let locked = self.policy.auto_lock(identity, worst, self.queue_id);
        if let Some(lock) = &locked {
            self.reporting.new_lock(
                self.policy.config(),
                lock,
                identity,
                worst,
                self.queue_id,
                message.sample.as_ref(),
            );
        }
        // One "identity locked" per lock: a parallel session that trips the
        // same rule a moment later finds the lock in force.
        let window = format_duration(worst.rate.window);
        let (rule, count, limit) = (&worst.rule, worst.usage.used, worst.usage.limit);
        if locked.as_ref().is_none_or(|l| l.fresh) {
            warn!(queue_id = self.queue_id, identity = %identity, source = %identity.source, %rule, count, limit, %window, "identity locked");
        } else {
            info!(queue_id = self.queue_id, identity = %identity, %rule, "identity already locked by a parallel session");
        }
        let Some(lock) = locked else {
            let vars = Vars {
                identity: &identity.value,
                trip: Some(worst),
                ..Vars::default()
            };
            let reply = reply::render(self.policy.config().replies.reject.get_ref(), &vars);
            return self.refuse(Some(&identity.value), &worst.rule, reply);
        };
        message.lock = Some(lock.entry);
        // What tripped the lock is not a support-address exception.
        self.locked(message, stage, false)
    }

    fn locked_reply(&self, identity: &str) -> Reply {
        reply::render(
            self.policy.config().replies.locked.get_ref(),
            &Vars {
                identity,
                ..Vars::default()
            },
        )
    }

    fn refuse_locked(&self, message: &Message, stage: Stage) -> Verdict {
        self.refuse_as_locked(message, stage, RULE_LOCKED, "refused: identity is locked")
    }

    /// A locked identity past `locks.hold_limit`: refused as locked.
    fn refuse_hold_full(&self, message: &Message, stage: Stage) -> Verdict {
        let why = "refused: identity is locked and locks.hold_limit is reached";
        self.refuse_as_locked(message, stage, RULE_HOLD_LIMIT, why)
    }

    fn refuse_as_locked(&self, message: &Message, stage: Stage, rule: &str, why: &str) -> Verdict {
        let identity = message.plan.as_ref().map_or("unknown", |p| p.identity.value.as_str());
        info!(
            queue_id = self.queue_id,
            identity = %identity,
            stage = %stage,
            action = "locked",
            "{why}"
        );
        self.refuse(Some(identity), rule, self.locked_reply(identity))
    }

    /// A locked identity's whole message refused at its end.
    fn refuse_locked_message(&self, message: &Message) -> Verdict {
        let identity = message.plan.as_ref().map_or("unknown", |p| p.identity.value.as_str());
        info!(queue_id = self.queue_id, identity = %identity, action = "locked", "refused: identity is locked");
        self.refuse(Some(identity), RULE_LOCKED, self.locked_reply(identity))
    }

    /// A locked identity's message into the hold queue.
    fn hold(&self, message: &Message) -> Verdict {
        let (Some(plan), Some(lock)) = (&message.plan, &message.lock) else {
            return self.refuse_locked_message(message);
        };
        let identity = &plan.identity;
        let recipients = message.recipients;
        if !self.policy.take_hold(&identity.value) {
            // A parallel session took the last place meanwhile.
            return self.refuse_hold_full(message, Stage::Eom);
        }
        info!(queue_id = self.queue_id, identity = %identity, recipients, action = "hold", "held: identity is locked");
        self.reporting.observer.refused(
            Some(&identity.value),
            RULE_LOCKED,
            Refusal::Hold { recipients },
            self.queue_id,
        );
        Verdict::Hold {
            reason: reply::escape(&format!(
                "egress-milter: {} is locked ({})",
                identity.value, lock.reason
            )),
            fallback: self.locked_reply(&identity.value),
        }
    }

    fn too_many_recipients(&self, message: &Message, rcpt: &[u8], cap: u32) -> Verdict {
        let identity = message.plan.as_ref().map(|p| p.identity.value.as_str());
        if !self.policy.enforcing() {
            info!(queue_id = self.queue_id, recipient = %lossy(rcpt), cap, "too many recipients in one message, would refuse [dry run, not done]");
            return Verdict::Continue;
        }
        let reply = reply::render(
            self.policy.config().replies.too_many_recipients.get_ref(),
            &Vars {
                identity: identity.unwrap_or(""),
                limit: Some(cap),
                ..Vars::default()
            },
        );
        info!(queue_id = self.queue_id, recipient = %lossy(rcpt), cap, "recipient refused: too many recipients in one message");
        self.refuse(identity, RULE_MAX_RECIPIENTS, reply)
    }

    fn conflicting_headers(&self, header: &str) -> Verdict {
        let spec = self.policy.config().replies.error.get_ref();
        let reply = reply::render(
            &ReplySpec::new(
                &spec.code,
                &spec.status,
                "Conflicting {header} headers: the sender cannot be identified",
            ),
            &Vars {
                header: Some(header),
                ..Vars::default()
            },
        );
        warn!(queue_id = self.queue_id, header = %header, "message refused: differing copies of the identity header from a trusted client");
        self.refuse(None, RULE_CONFLICT, reply)
    }

    /// Counts a refusal by the class of its reply and returns it.
    fn refuse(&self, identity: Option<&str>, rule: &str, reply: Reply) -> Verdict {
        let how = if reply.is_temporary() {
            Refusal::Tempfail
        } else {
            Refusal::Reject
        };
        self.reporting.observer.refused(identity, rule, how, self.queue_id);
        Verdict::Refuse(reply)
    }
}

/// Whether `trip` counts `plan`'s identity (not its domain, nor overflow).
fn owns(plan: &Plan, trip: &Trip) -> bool {
    trip.scope == crate::config::Scope::Identity && trip.key == plan.identity.value
}

/// The plan a trip belongs to: the stamping login's if it counts that
/// login, the message's identity otherwise.
fn owner<'m>(message: &'m Message, trip: &Trip) -> Option<&'m Plan> {
    match &message.stamper {
        Some(login) if owns(login, trip) => Some(login),
        _ => message.plan.as_ref(),
    }
}

/// The sources that read headers: identity headers, and the local
/// submissions' stamp and PHP header.
fn header_sources(policy: &Policy) -> impl Iterator<Item = &IdentitySource> {
    policy.config().identity.sources.get_ref().iter().filter(|s| {
        matches!(
            s,
            IdentitySource::Header(_) | IdentitySource::LocalUser | IdentitySource::PhpScript
        )
    })
}

/// Appends `parts` to `text`, keeping at most [`MAX_REPORT_BYTES`].
fn append_bounded(text: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        let room = MAX_REPORT_BYTES.saturating_sub(text.len());
        text.extend_from_slice(&part[..part.len().min(room)]);
    }
}

/// The domains of the addresses of a `From:` header value, lowercased.
fn from_domains(value: &[u8]) -> Vec<String> {
    let mut buf = Vec::with_capacity(value.len().min(4096) + 10);
    buf.extend_from_slice(b"From: ");
    buf.extend_from_slice(&value[..value.len().min(4096)]);
    buf.extend_from_slice(b"\r\n\r\n");
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(&buf) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|a| a.address())
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.').to_lowercase()))
        .collect()
}

/// The identity of a message no source could identify: all such messages
/// share one set of counters, so they cannot escape the limits.
fn unidentified() -> Identity {
    Identity {
        value: crate::config::address::UNIDENTIFIED.into(),
        source: IdentitySource::ClientAddress,
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

#[cfg(test)]
mod tests {
    //! The stage logic without a socket: a session driven stage by stage as
    //! the callbacks drive it, against a real policy and lock list.

    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::locks::file::{LockSource, Timestamp};
    use crate::locks::{FileLocks, LockStore};
    use crate::policy::Counters;
    use crate::test_util::block_on;
    use std::path::Path;

    struct Fixture {
        policy: Arc<Policy>,
        locks: Arc<FileLocks>,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    const RULES: &str = r#"
[identity]
sources = ["auth", "header:X-Sender", "client-address"]
trusted_networks = ["10.0.0.0/8"]

[[rule]]
name = "per-minute"
rate = "2/1m"
action = "tempfail"

[[rule]]
name = "lock-5"
rate = "5/1h"
action = "lock"
"#;

    fn fixture(locks_extra: &str) -> Fixture {
        fixture_with(RULES, locks_extra)
    }

    fn fixture_with(rules: &str, locks_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.toml");
        let text = format!("{rules}\n[locks]\nfile = \"{}\"\n{locks_extra}", file.display());
        let config = Arc::new(Config::parse(&text, Path::new("t.toml")).unwrap());
        let clock = Clock::manual();
        let locks = FileLocks::open(&file, Arc::new(|s: &str| Ok(s.to_lowercase()))).unwrap();
        let policy = Arc::new(Policy::new(config, Counters::new(clock.clone()), locks.clone()));
        Fixture {
            policy,
            locks,
            clock,
            _dir: dir,
        }
    }

    impl Fixture {
        fn session(&self, ip: &str) -> Session {
            let mut s = Session::new(self.policy.clone(), Reporting::none());
            s.connect(Some(SocketAddr::new(ip.parse().unwrap(), 4711)));
            s
        }

        fn lock(&self, identity: &str) {
            let now = self.clock.wall_now();
            let entry = LockEntry {
                identity: identity.into(),
                source: LockSource::Manual,
                locked_at: Timestamp(now),
                reason: "test".into(),
                rule: None,
                previous_locks: 0,
                expires_at: None,
                note: None,
                history: Vec::new(),
            };
            assert!(self.locks.lock(entry, now));
        }
    }

    fn refused_with(v: &Verdict, code: &str) -> bool {
        matches!(v, Verdict::Refuse(r) if r.code == code)
    }

    /// One whole message from a SASL login; the verdict of its first refusal.
    fn send(s: &mut Session, login: &str, rcpts: &[&str]) -> Verdict {
        let v = block_on(s.mail(b"<a@example.com>", Some(login.as_bytes()), "Q"));
        if v != Verdict::Continue {
            return v;
        }
        for r in rcpts {
            let v = block_on(s.rcpt(r.as_bytes(), "Q"));
            if v != Verdict::Continue {
                block_on(s.abandon("Q"));
                return v;
            }
        }
        for v in [block_on(s.data("Q")), block_on(s.eoh("Q"))] {
            if v != Verdict::Continue {
                block_on(s.abandon("Q"));
                return v;
            }
        }
        let v = block_on(s.eom("Q"));
        s.abort();
        v
    }

    /// Drives one message up to (and including) DATA and the end of its
    /// headers, as a parallel session would stand before its end.
    fn up_to_eoh(s: &mut Session, login: &str, rcpt: &str) {
        assert_eq!(
            block_on(s.mail(b"<a@example.com>", Some(login.as_bytes()), "Q")),
            Verdict::Continue
        );
        assert_eq!(block_on(s.rcpt(rcpt.as_bytes(), "Q")), Verdict::Continue);
        assert_eq!(block_on(s.data("Q")), Verdict::Continue);
        assert_eq!(block_on(s.eoh("Q")), Verdict::Continue);
    }

    /// alice's MTA retries its deferred message to `rcpt` `n` times: each
    /// refused by the throttle, none counted towards the lock rule.
    fn retries_not_counted(f: &Fixture, s: &mut Session, rcpt: &str, n: usize) {
        for i in 0..n {
            let v = send(s, "alice@example.com", &[rcpt]);
            assert!(refused_with(&v, "451"), "retry {i}: {v:?}");
        }
        assert!(
            f.policy.lock_of("alice@example.com").is_none(),
            "locked by its own retries"
        );
    }

    #[test]
    fn a_message_refused_at_its_end_is_a_retry_when_the_client_sends_it_again() {
        // per-minute 2/1m throttles, lock-5 5/1h locks on attempts.
        let f = fixture("");
        let (mut a, mut b, mut c) = (f.session("192.0.2.1"), f.session("192.0.2.1"), f.session("192.0.2.1"));
        assert_eq!(send(&mut a, "alice@example.com", &["x@example.net"]), Verdict::Continue);
        // Two parallel sessions both pass DATA with one place left: the
        // first to end takes it, the other is refused at its end.
        up_to_eoh(&mut b, "alice@example.com", "<y@example.net>");
        up_to_eoh(&mut c, "alice@example.com", "<z@example.net>");
        assert_eq!(block_on(b.eom("Q")), Verdict::Continue);
        b.abort();
        let refused = block_on(c.eom("Q"));
        assert!(refused_with(&refused, "451"), "{refused:?}");
        c.abort();
        // Three attempts so far. The customer's MTA retries its deferred
        // message on its schedule: each retry is refused by the throttle
        // and, being a retry, never counts towards lock-5.
        retries_not_counted(&f, &mut c, "<z@example.net>", 6);
        // A new message is an attempt: two more reach the lock.
        assert!(refused_with(
            &send(&mut c, "alice@example.com", &["<n1@example.net>"]),
            "451"
        ));
        assert!(refused_with(
            &send(&mut c, "alice@example.com", &["<n2@example.net>"]),
            "451"
        ));
        assert!(refused_with(
            &send(&mut c, "alice@example.com", &["<n3@example.net>"]),
            "550"
        ));
        assert!(f.policy.lock_of("alice@example.com").is_some());
    }

    #[test]
    fn the_retry_of_a_message_s_deferred_recipients_is_not_a_new_attempt() {
        // A recipient throttle defers part of a message; the client's MTA
        // sends the message to the rest and retries the deferred recipient
        // alone, again and again, on its schedule.
        let rules = r#"
[identity]
sources = ["auth", "client-address"]

[[rule]]
name = "recipients-per-minute"
count = "recipients"
rate = "2/1m"
action = "tempfail"

[[rule]]
name = "lock-5"
rate = "5/1h"
action = "lock"
"#;
        let f = fixture_with(rules, "");
        let mut s = f.session("192.0.2.1");
        let login = Some(&b"alice@example.com"[..]);
        assert_eq!(block_on(s.mail(b"<a@example.com>", login, "Q")), Verdict::Continue);
        assert_eq!(block_on(s.rcpt(b"<x@example.net>", "Q")), Verdict::Continue);
        assert_eq!(block_on(s.rcpt(b"<y@example.net>", "Q")), Verdict::Continue);
        assert!(refused_with(&block_on(s.rcpt(b"<z@example.net>", "Q")), "451"));
        assert_eq!(block_on(s.data("Q")), Verdict::Continue);
        assert_eq!(block_on(s.eoh("Q")), Verdict::Continue);
        assert_eq!(block_on(s.eom("Q")), Verdict::Continue);
        s.abort();
        retries_not_counted(&f, &mut s, "<z@example.net>", 8);
        f.clock.advance(std::time::Duration::from_secs(61));
        assert_eq!(
            send(&mut s, "alice@example.com", &["<z@example.net>"]),
            Verdict::Continue
        );
        // New messages are attempts: the first message and four more reach
        // lock-5's five; the sixth attempt locks.
        for rcpt in [
            "<n1@example.net>",
            "<n2@example.net>",
            "<n3@example.net>",
            "<n4@example.net>",
        ] {
            f.clock.advance(std::time::Duration::from_secs(31));
            assert_eq!(send(&mut s, "alice@example.com", &[rcpt]), Verdict::Continue, "{rcpt}");
        }
        f.clock.advance(std::time::Duration::from_secs(31));
        let sixth = send(&mut s, "alice@example.com", &["<n5@example.net>"]);
        assert!(refused_with(&sixth, "550"), "{sixth:?}");
    }

    #[test]
    fn no_message_is_accepted_once_its_identity_is_locked() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        up_to_eoh(&mut s, "alice@example.com", "<y@example.net>");
        // A parallel session (or an admin) locks alice meanwhile.
        f.lock("alice@example.com");
        let v = block_on(s.eom("Q"));
        assert!(refused_with(&v, "550"), "{v:?}");
        assert_eq!(s.enforced_lock(), Some("alice@example.com"));
        s.abort();
    }

    #[test]
    fn no_message_is_accepted_once_the_login_that_stamped_it_is_locked() {
        let rules = RULES.replace(
            "trusted_networks = [\"10.0.0.0/8\"]",
            "trusted_networks = [\"10.0.0.0/8\"]\nheader_logins = [\"webmail@example.com\"]",
        );
        let f = fixture_with(&rules, "");
        let mut s = f.session("192.0.2.9");
        let login = Some(&b"webmail@example.com"[..]);
        assert_eq!(block_on(s.mail(b"<bob@example.com>", login, "Q")), Verdict::Continue);
        assert_eq!(block_on(s.rcpt(b"<y@example.net>", "Q")), Verdict::Continue);
        s.header(b"X-Sender", b"bob@example.com");
        assert_eq!(block_on(s.eoh("Q")), Verdict::Continue);
        f.lock("webmail@example.com");
        let v = block_on(s.eom("Q"));
        assert!(refused_with(&v, "550"), "{v:?}");
        assert_eq!(s.enforced_lock(), Some("webmail@example.com"));
    }

    #[test]
    fn a_message_limit_refuses_at_data_and_counts_only_accepted_mail() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        assert_eq!(send(&mut s, "alice@example.com", &["x@example.net"]), Verdict::Continue);
        assert_eq!(send(&mut s, "alice@example.com", &["x@example.net"]), Verdict::Continue);
        // Asked at MAIL, refused at DATA, once the envelope is known.
        let mail = block_on(s.mail(b"<a@example.com>", Some(b"alice@example.com"), "Q"));
        assert_eq!(mail, Verdict::Continue);
        assert_eq!(block_on(s.rcpt(b"<y@example.net>", "Q")), Verdict::Continue);
        let third = block_on(s.data("Q"));
        assert!(refused_with(&third, "451"), "{third:?}");
        block_on(s.abandon("Q"));
        // Another login is counted on its own.
        assert_eq!(send(&mut s, "bob@example.com", &["x@example.net"]), Verdict::Continue);
    }

    #[test]
    fn a_locked_login_is_refused_at_mail_without_support_addresses() {
        let f = fixture("allow_recipients = []");
        f.lock("alice@example.com");
        let mut s = f.session("192.0.2.1");
        let v = block_on(s.mail(b"<a@example.com>", Some(b"alice@example.com"), "Q"));
        assert!(refused_with(&v, "550"), "{v:?}");
    }

    #[test]
    fn a_locked_login_may_write_to_support_only() {
        let f = fixture("allow_recipients = [\"postmaster\"]");
        f.lock("alice@example.com");
        let mut s = f.session("192.0.2.1");
        assert_eq!(
            block_on(s.mail(b"<>", Some(b"alice@example.com"), "Q")),
            Verdict::Continue
        );
        assert_eq!(block_on(s.rcpt(b"<postmaster@example.com>", "Q")), Verdict::Continue);
        assert!(refused_with(&block_on(s.rcpt(b"<victim@example.net>", "Q")), "550"));
        assert_eq!(block_on(s.eoh("Q")), Verdict::Continue);
        assert_eq!(block_on(s.eom("Q")), Verdict::Continue, "to support only: delivered");
    }

    #[test]
    fn hold_takes_a_locked_message_to_the_end_and_holds_it() {
        let f = fixture("locked_action = \"hold\"");
        f.lock("alice@example.com");
        let mut s = f.session("192.0.2.1");
        assert_eq!(
            block_on(s.mail(b"<a@example.com>", Some(b"alice@example.com"), "Q")),
            Verdict::Continue
        );
        assert_eq!(block_on(s.rcpt(b"<victim@example.net>", "Q")), Verdict::Continue);
        assert_eq!(block_on(s.eoh("Q")), Verdict::Continue);
        assert!(matches!(block_on(s.eom("Q")), Verdict::Hold { .. }));
    }

    /// Null-sender mail from the local door (127.0.0.1 port 0, Postfix's
    /// non_smtpd_milters) through MAIL, RCPT, the headers and the end.
    fn local_null_sender(f: &Fixture, headers: &[(&str, &str)]) -> Verdict {
        let mut s = Session::new(f.policy.clone(), Reporting::none());
        s.connect(Some(SocketAddr::new("127.0.0.1".parse().unwrap(), 0)));
        for v in [
            block_on(s.mail(b"<>", None, "Q")),
            block_on(s.rcpt(b"<alice@example.com>", "Q")),
        ] {
            if v != Verdict::Continue {
                return v;
            }
        }
        for (name, value) in headers {
            s.header(name.as_bytes(), value.as_bytes());
        }
        match block_on(s.eoh("Q")) {
            Verdict::Continue => block_on(s.eom("Q")),
            v => v,
        }
    }

    /// The session rules with the pickup stamp declared (the local-user
    /// source) for local submissions.
    fn stamped_door() -> String {
        RULES.replace("sources = [\"auth\",", "sources = [\"auth\", \"local-user\",")
    }

    #[test]
    fn the_mtas_own_notices_pass_untouched_and_a_local_users_null_sender_mail_counts() {
        // Names of local users are looked up on tokio's blocking threads.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _context = runtime.enter();
        let f = fixture_with(&stamped_door(), "");
        // The MTA's bounce: no stamp (a stamp below the first header is the
        // sender's own writing).
        let bounce = [
            ("From", "MAILER-DAEMON@mta.example.net (Mail Delivery System)"),
            ("X-Egress-Submitter", "uid=1001 id=Q"),
        ];
        // uid 0 has a name on every host: the test needs no users of its own.
        let by_user = [("X-Egress-Submitter", "uid=0 id=Q")];
        // The client address of the local door is locked (say, by a script
        // that sent under it): the MTA's own bounces still pass, uncounted.
        f.lock("127.0.0.1");
        for _ in 0..20 {
            assert_eq!(local_null_sender(&f, &bounce), Verdict::Continue);
            assert_eq!(
                local_null_sender(&f, &[]),
                Verdict::Continue,
                "no header at all: the MTA's"
            );
        }
        // The same from a local user (the stamp first, whatever follows it)
        // is that user's mail: counted, and refused once locked.
        let mut forged = by_user.to_vec();
        forged.extend_from_slice(&bounce);
        let results: Vec<_> = (0..3).map(|_| local_null_sender(&f, &forged)).collect();
        assert_eq!(results[..2], [Verdict::Continue, Verdict::Continue]);
        assert!(refused_with(&results[2], "451"), "counted as local:root: {results:?}");
        f.lock("local:root");
        assert!(refused_with(&local_null_sender(&f, &by_user), "550"));
        // Without the stamp declared nothing tells the two apart: the local
        // door's null-sender mail is uncounted under the client address,
        // and refused when that is locked.
        let g = fixture("");
        for _ in 0..5 {
            assert_eq!(local_null_sender(&g, &bounce), Verdict::Continue);
        }
        g.lock("127.0.0.1");
        assert!(refused_with(&local_null_sender(&g, &bounce), "550"));
    }

    #[test]
    fn a_header_identity_is_decided_after_the_headers() {
        let f = fixture("");
        f.lock("carol@example.com");
        // A trusted relay: no SASL login, the identity comes from the header.
        let mut s = f.session("10.0.0.5");
        assert_eq!(
            block_on(s.mail(b"<bounce@relay.example>", None, "Q")),
            Verdict::Continue
        );
        assert_eq!(
            block_on(s.rcpt(b"<victim@example.net>", "Q")),
            Verdict::Continue,
            "identity still pending"
        );
        s.header(b"X-Sender", b"carol@example.com");
        assert!(
            refused_with(&block_on(s.eoh("Q")), "550"),
            "locked once the header is read"
        );
    }

    #[test]
    fn the_lock_rule_locks_and_the_tripping_attempt_is_refused_as_locked() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        // Attempts are counted whether or not they are accepted: two
        // accepted, then throttled ones until the lock rule trips.
        let mut verdicts = Vec::new();
        for i in 0..6 {
            verdicts.push(send(&mut s, "mallory@example.com", &[&format!("x{i}@example.net")]));
        }
        assert!(refused_with(&verdicts[2], "451"), "{verdicts:?}");
        assert!(refused_with(&verdicts[5], "550"), "{verdicts:?}");
        assert!(f.policy.lock_of("mallory@example.com").is_some());
        // From now on refused as locked on any session, at the first
        // recipient that is not a support address.
        let mut other = f.session("192.0.2.9");
        assert_eq!(
            block_on(other.mail(b"<>", Some(b"mallory@example.com"), "Q")),
            Verdict::Continue
        );
        let v = block_on(other.rcpt(b"<x@example.net>", "Q"));
        assert!(refused_with(&v, "550"), "{v:?}");
        assert_eq!(block_on(other.rcpt(b"<abuse@example.com>", "Q")), Verdict::Continue);
    }

    #[test]
    fn a_clients_retries_of_a_deferred_envelope_are_not_new_attempts() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        // A customer's MTA (rules: 2 a minute, lock at 5 attempts an hour):
        // two messages through, two deferred (451) and retried ten times
        // each on its schedule: four attempts in all.
        let queue: Vec<String> = (0..4).map(|i| format!("<c{i}@example.net>")).collect();
        for r in &queue[..2] {
            assert_eq!(send(&mut s, "mta@example.com", &[r]), Verdict::Continue);
        }
        // Two more are deferred, and retried many times: never a lock.
        for _ in 0..10 {
            for r in &queue[2..] {
                assert!(refused_with(&send(&mut s, "mta@example.com", &[r]), "451"));
            }
        }
        assert!(f.policy.lock_of("mta@example.com").is_none(), "4 attempts");
        // A new message (another envelope) is a new attempt: the fifth is
        // throttled, the sixth trips the lock rule.
        assert!(refused_with(
            &send(&mut s, "mta@example.com", &["<new1@example.net>"]),
            "451"
        ));
        assert!(refused_with(
            &send(&mut s, "mta@example.com", &["<new2@example.net>"]),
            "550"
        ));
        assert!(f.policy.lock_of("mta@example.com").is_some());
        // The same recipient with another envelope sender is new too.
        let g = fixture("");
        let mut s = g.session("192.0.2.1");
        for i in 0..6 {
            let v = block_on(s.mail(format!("<b{i}@example.com>").as_bytes(), Some(b"bot@example.com"), "Q"));
            assert_eq!(v, Verdict::Continue);
            block_on(s.rcpt(b"<victim@example.net>", "Q"));
            let _ = block_on(s.data("Q"));
            block_on(s.abandon("Q"));
        }
        assert!(g.policy.lock_of("bot@example.com").is_some());
    }

    #[test]
    fn a_transaction_given_up_before_data_still_counts() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        for i in 0..6 {
            assert_eq!(
                block_on(s.mail(b"<m@example.com>", Some(b"mallory@example.com"), "Q")),
                Verdict::Continue
            );
            block_on(s.rcpt(format!("<v{i}@example.net>").as_bytes(), "Q"));
            block_on(s.abandon("Q"));
        }
        assert!(
            f.policy.lock_of("mallory@example.com").is_some(),
            "5 attempts, then the lock"
        );
    }

    #[test]
    fn the_per_message_recipient_cap_refuses_the_recipient_past_it() {
        let f = fixture("");
        let mut s = f.session("192.0.2.1");
        let cap = f.policy.config().limits.max_recipients_per_message;
        assert_eq!(
            block_on(s.mail(b"<a@example.com>", Some(b"dave@example.com"), "Q")),
            Verdict::Continue
        );
        for i in 0..cap {
            let v = block_on(s.rcpt(format!("<r{i}@example.net>").as_bytes(), "Q"));
            assert_eq!(v, Verdict::Continue, "recipient {i}");
        }
        assert!(refused_with(&block_on(s.rcpt(b"<one-more@example.net>", "Q")), "550"));
    }
}
