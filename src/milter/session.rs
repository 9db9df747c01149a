// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! One MTA connection: turns the SMTP stages the milter sees into policy
//! questions, as early as the identity is known, and into verdicts.
//!
//! Where each refusal happens:
//! - a locked identity known at MAIL: refused at RCPT for every recipient
//!   that is not a support address (at MAIL itself if there are none);
//! - an identity over a message limit: at MAIL;
//! - an identity over a recipient limit, or a message over the per-message
//!   recipient cap: at that RCPT, for that recipient only;
//! - an identity known only from a header: after the headers, whole message;
//! - finally, at end of message, the message is counted, unless a limit was
//!   reached meanwhile by a parallel session: then it is refused uncounted.

use crate::config::{Action, IdentitySource, LockedAction};
use crate::locks::file::LockEntry;
use crate::ops::metrics::{RULE_CONFLICT, RULE_LOCKED, RULE_MAX_RECIPIENTS, Refusal};
use crate::policy::identity::{self, Facts, HeaderValues, Identity, Resolution};
use crate::policy::reply::{self, Reply, Vars};
use crate::policy::{Plan, Policy, Trip, most_severe};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::{info, warn};

/// Largest number of recipients remembered while the identity is pending.
/// Only recipients that could be support addresses are remembered (and at
/// most this many of them); any other recipient, or one past the cap, means
/// the message is not to support addresses only.
const MAX_PENDING_RECIPIENTS: usize = 100;

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
    client_ip: Option<IpAddr>,
    message: Option<Message>,
}

struct Message {
    envelope_from: Vec<u8>,
    bounce: bool,
    auth: Option<Vec<u8>>,
    headers: HeaderValues,
    /// Set once the identity is known.
    plan: Option<Plan>,
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
}

impl Session {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            policy,
            client_ip: None,
            message: None,
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Whether any identity source reads headers.
    pub fn needs_headers(&self) -> bool {
        header_sources(&self.policy).next().is_some()
    }

    pub fn connect(&mut self, client_ip: Option<IpAddr>) {
        self.client_ip = client_ip;
    }

    /// MAIL FROM. `auth` is the `{auth_authen}` macro.
    pub fn mail(&mut self, from: &[u8], auth: Option<&[u8]>, queue_id: &str) -> Verdict {
        self.policy.observer().seen();
        let message = Message {
            envelope_from: from.to_vec(),
            bounce: identity::is_null_sender(from),
            auth: auth.filter(|a| !a.is_empty()).map(<[u8]>::to_vec),
            headers: HeaderValues::default(),
            plan: None,
            lock: None,
            recipients: 0,
            support_only: true,
            pending_recipients: Vec::new(),
            pending_not_support: false,
        };
        let message = self.message.insert(message);
        let policy = &self.policy;
        let facts = Facts {
            auth: message.auth.as_deref(),
            envelope_from: Some(&message.envelope_from),
            client_ip: self.client_ip,
            headers: None,
        };
        let (resolution, skipped) = identity::resolve(&policy.config().identity, &facts);
        log_skipped(queue_id, &skipped);
        let identity = match resolution {
            Resolution::Resolved(id) => id,
            Resolution::Unidentified => unidentified(),
            Resolution::Pending | Resolution::Conflict { .. } => return Verdict::Continue,
        };
        message.plan = Some(policy.plan(identity, message.bounce));
        message.lock = message.plan.as_ref().and_then(|p| lock_in_force(policy, p, queue_id));
        if message.lock.is_some() {
            let no_exceptions = policy.config().locks.allow_recipients.is_empty();
            let hold = policy.config().locks.locked_action == LockedAction::Hold;
            if no_exceptions && !hold {
                return refuse_locked(policy, message, queue_id, "mail");
            }
            return Verdict::Continue;
        }
        let trips = message
            .plan
            .as_ref()
            .map(|p| {
                let mut trips = policy.attempt(p, 1, 0);
                trips.extend(policy.peek(p, 1, 0));
                trips
            })
            .unwrap_or_default();
        act(policy, message, trips, queue_id, "mail")
    }

    /// RCPT TO.
    pub fn rcpt(&mut self, rcpt: &[u8], queue_id: &str) -> Verdict {
        let policy = &self.policy;
        let Some(message) = self.message.as_mut() else {
            return Verdict::Continue;
        };
        let cap = policy.config().limits.max_recipients_per_message;
        if cap > 0 && message.recipients >= cap {
            if !policy.enforcing() {
                info!(queue_id, recipient = %lossy(rcpt), cap, "too many recipients in one message, would refuse [dry run, not done]");
                return Verdict::Continue;
            }
            let reply = reply::render(
                policy.config().replies.too_many_recipients.get_ref(),
                &Vars {
                    identity: message.plan.as_ref().map_or("", |p| &p.identity.value),
                    limit: Some(cap),
                    ..Vars::default()
                },
            );
            info!(queue_id, recipient = %lossy(rcpt), cap, "recipient refused: too many recipients in one message");
            let identity = message.plan.as_ref().map(|p| p.identity.value.as_str());
            policy
                .observer()
                .refused(identity, RULE_MAX_RECIPIENTS, refusal(&reply), 0, queue_id);
            return Verdict::Refuse(reply);
        }
        let Some(plan) = &message.plan else {
            // Identity pending until the headers: remember what is needed to
            // tell, should it be locked, whether it writes to support only.
            if message.pending_recipients.len() < MAX_PENDING_RECIPIENTS && policy.may_be_support_address(rcpt) {
                message.pending_recipients.push(rcpt.to_vec());
            } else {
                message.pending_not_support = true;
            }
            message.recipients += 1;
            return Verdict::Continue;
        };
        let support = message.lock.is_some() && policy.may_write_while_locked(&plan.identity, rcpt);
        if message.lock.is_some() {
            if support || policy.config().locks.locked_action == LockedAction::Hold {
                message.support_only &= support;
                message.recipients += 1;
                return Verdict::Continue;
            }
            return refuse_locked(policy, message, queue_id, "rcpt");
        }
        let mut trips = policy.attempt(plan, 0, 1);
        trips.extend(policy.peek(plan, 0, message.recipients + 1));
        let verdict = act(policy, message, trips, queue_id, "rcpt");
        if verdict == Verdict::Continue {
            message.recipients += 1;
            message.support_only = false;
        }
        verdict
    }

    /// One header; only identity headers are kept.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let policy = &self.policy;
        if let Some(message) = self.message.as_mut()
            && message.plan.is_none()
        {
            let identity = &policy.config().identity;
            message
                .headers
                .record(identity.sources.get_ref(), name, value, identity.max_length);
        }
    }

    /// End of headers: resolves a header identity and checks the whole message.
    pub fn eoh(&mut self, queue_id: &str) -> Verdict {
        let policy = &self.policy;
        let Some(message) = self.message.as_mut() else {
            return Verdict::Continue;
        };
        if message.plan.is_some() {
            return Verdict::Continue;
        }
        let facts = Facts {
            auth: message.auth.as_deref(),
            envelope_from: Some(&message.envelope_from),
            client_ip: self.client_ip,
            headers: Some(&message.headers),
        };
        let (resolution, skipped) = identity::resolve(&policy.config().identity, &facts);
        log_skipped(queue_id, &skipped);
        let identity = match resolution {
            Resolution::Resolved(id) => id,
            Resolution::Unidentified | Resolution::Pending => unidentified(),
            Resolution::Conflict { header } => {
                let spec = policy.config().replies.error.get_ref();
                let reply = reply::render(
                    &crate::config::ReplySpec::new(
                        &spec.code,
                        &spec.status,
                        "Conflicting {header} headers: the sender cannot be identified",
                    ),
                    &Vars {
                        header: Some(&header),
                        ..Vars::default()
                    },
                );
                warn!(queue_id, header = %header, "message refused: differing copies of the identity header from a trusted client");
                policy
                    .observer()
                    .refused(None, RULE_CONFLICT, refusal(&reply), 0, queue_id);
                return Verdict::Refuse(reply);
            }
        };
        let plan = policy.plan(identity, message.bounce);
        message.lock = lock_in_force(policy, &plan, queue_id);
        if message.lock.is_some() {
            message.support_only = !message.pending_not_support
                && message
                    .pending_recipients
                    .iter()
                    .all(|r| policy.may_write_while_locked(&plan.identity, r));
            message.pending_recipients = Vec::new();
            message.plan = Some(plan);
            if message.support_only || policy.config().locks.locked_action == LockedAction::Hold {
                return Verdict::Continue;
            }
            return refuse_locked(policy, message, queue_id, "eoh");
        }
        message.pending_recipients = Vec::new();
        let mut trips = policy.attempt(&plan, 1, message.recipients);
        trips.extend(policy.peek(&plan, 1, message.recipients));
        message.plan = Some(plan);
        message.support_only = false;
        act(policy, message, trips, queue_id, "eoh")
    }

    /// End of message: hold a locked identity's mail, or count the message.
    pub fn eom(&mut self, queue_id: &str) -> Verdict {
        let policy = &self.policy;
        let Some(message) = self.message.as_mut() else {
            return Verdict::Continue;
        };
        let Some(plan) = &message.plan else {
            // No MAIL or identity seen: nothing to count.
            return Verdict::Continue;
        };
        if let Some(lock) = &message.lock {
            if message.support_only {
                info!(queue_id, identity = %plan.identity, recipients = message.recipients, "accepted: locked identity writing to support addresses only (not counted)");
                policy
                    .observer()
                    .accepted(&plan.identity.value, message.recipients, queue_id);
                return Verdict::Continue;
            }
            return locked_eom(policy, plan, lock, message.recipients, queue_id);
        }
        let trips = policy.commit(plan, message.recipients);
        let verdict = act(policy, message, trips, queue_id, "eom");
        if verdict == Verdict::Continue
            && let Some(plan) = &message.plan
        {
            info!(
                queue_id,
                identity = %plan.identity,
                source = %plan.identity.source,
                recipients = message.recipients,
                action = "accept",
                "accepted"
            );
            policy
                .observer()
                .accepted(&plan.identity.value, message.recipients, queue_id);
        }
        verdict
    }

    /// The message was aborted: forget it (nothing was counted).
    pub fn abort(&mut self) {
        self.message = None;
    }
}

/// The identity's lock, if it is to be enforced. In dry-run mode a lock is
/// only logged: nothing is refused, locks included.
fn lock_in_force(policy: &Policy, plan: &Plan, queue_id: &str) -> Option<Arc<LockEntry>> {
    let lock = policy.lock_of(&plan.identity.value)?;
    if policy.enforcing() {
        return Some(lock);
    }
    info!(
        queue_id,
        identity = %plan.identity,
        source = %plan.identity.source,
        "identity is locked, would refuse [dry run, not done]"
    );
    policy.observer().not_enforced(RULE_LOCKED, Action::Reject);
    None
}

fn header_sources(policy: &Policy) -> impl Iterator<Item = &IdentitySource> {
    policy
        .config()
        .identity
        .sources
        .get_ref()
        .iter()
        .filter(|s| matches!(s, IdentitySource::Header(_)))
}

/// The identity of a message no source could identify: all such messages
/// share one set of counters, so they cannot escape the limits.
fn unidentified() -> Identity {
    Identity {
        value: "unknown".into(),
        source: IdentitySource::ClientAddress,
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn log_skipped(queue_id: &str, skipped: &[identity::Skipped]) {
    for s in skipped {
        warn!(queue_id, source = %s.source, "identity source skipped: {}", s.why);
    }
}

/// Acts on the rules a message or recipient would exceed.
fn act(policy: &Policy, message: &mut Message, trips: Vec<Trip>, queue_id: &str, stage: &str) -> Verdict {
    let Some(worst) = most_severe(&trips) else {
        return Verdict::Continue;
    };
    let Some(plan) = &message.plan else {
        return Verdict::Continue;
    };
    let identity = &plan.identity;
    let others: Vec<&str> = trips
        .iter()
        .filter(|t| t.rule != worst.rule)
        .map(|t| t.rule.as_str())
        .collect();
    if worst.action == Action::Log || !policy.enforcing() {
        let what = if worst.action == Action::Log {
            "limit exceeded (action log: nothing refused)".to_string()
        } else {
            format!("limit exceeded, would {} [dry run, not done]", worst.action)
        };
        info!(
            queue_id,
            identity = %identity,
            source = %identity.source,
            stage,
            rule = %worst.rule,
            key = %worst.key,
            count = worst.usage.used,
            limit = worst.usage.limit,
            window = %crate::config::format_duration(worst.rate.window),
            also = %others.join(","),
            "{what}"
        );
        policy.observer().not_enforced(&worst.rule, worst.action);
        return Verdict::Continue;
    }
    let fields = |verb: &str| {
        info!(
            queue_id,
            identity = %identity,
            source = %identity.source,
            stage,
            recipients = message.recipients,
            rule = %worst.rule,
            key = %worst.key,
            count = worst.usage.used,
            limit = worst.usage.limit,
            window = %crate::config::format_duration(worst.rate.window),
            reset_in = %crate::config::format_duration(worst.usage.reset_in),
            also = %others.join(","),
            action = %worst.action,
            "{verb}"
        )
    };
    let vars = Vars {
        identity: &identity.value,
        trip: Some(worst),
        ..Vars::default()
    };
    let replies = &policy.config().replies;
    let refuse = |reply: Reply| {
        let how = refusal(&reply);
        policy
            .observer()
            .refused(Some(&identity.value), &worst.rule, how, 0, queue_id);
        Verdict::Refuse(reply)
    };
    match worst.action {
        Action::Log => Verdict::Continue,
        Action::Tempfail => {
            fields("refused temporarily");
            refuse(reply::render(replies.tempfail.get_ref(), &vars))
        }
        Action::Reject => {
            fields("rejected");
            refuse(reply::render(replies.reject.get_ref(), &vars))
        }
        Action::Lock => {
            let locked = policy.auto_lock(identity, worst, queue_id);
            // One "identity locked" per lock: a parallel session that trips
            // the same rule a moment later finds the lock in force.
            let window = crate::config::format_duration(worst.rate.window);
            let (rule, count, limit) = (&worst.rule, worst.usage.used, worst.usage.limit);
            if locked.as_ref().is_none_or(|l| l.fresh) {
                warn!(queue_id, identity = %identity, source = %identity.source, %rule, count, limit, %window, "identity locked");
            } else {
                info!(queue_id, identity = %identity, %rule, "identity already locked by a parallel session");
            }
            message.lock = locked.map(|l| l.entry);
            let Some(lock) = message.lock.clone() else {
                return refuse(reply::render(replies.reject.get_ref(), &vars));
            };
            let hold = policy.config().locks.locked_action == LockedAction::Hold;
            match stage {
                "eom" if hold => locked_eom(policy, plan, &lock, message.recipients, queue_id),
                "mail" | "rcpt" | "eoh" if hold => Verdict::Continue,
                "mail" if !policy.config().locks.allow_recipients.is_empty() => Verdict::Continue,
                _ => refuse_locked(policy, message, queue_id, stage),
            }
        }
    }
}

fn refuse_locked(policy: &Policy, message: &Message, queue_id: &str, stage: &str) -> Verdict {
    let identity = message.plan.as_ref().map_or("unknown", |p| p.identity.value.as_str());
    info!(
        queue_id,
        identity = %identity,
        stage,
        action = "locked",
        "refused: identity is locked"
    );
    let reply = reply::render(
        policy.config().replies.locked.get_ref(),
        &Vars {
            identity,
            ..Vars::default()
        },
    );
    policy
        .observer()
        .refused(Some(identity), RULE_LOCKED, refusal(&reply), 0, queue_id);
    Verdict::Refuse(reply)
}

fn locked_eom(policy: &Policy, plan: &Plan, lock: &LockEntry, recipients: u32, queue_id: &str) -> Verdict {
    let identity = &plan.identity;
    let locked_reply = reply::render(
        policy.config().replies.locked.get_ref(),
        &Vars {
            identity: &identity.value,
            ..Vars::default()
        },
    );
    if policy.config().locks.locked_action == LockedAction::Hold {
        info!(queue_id, identity = %identity, recipients, action = "hold", "held: identity is locked");
        policy
            .observer()
            .refused(Some(&identity.value), RULE_LOCKED, Refusal::Hold, recipients, queue_id);
        return Verdict::Hold {
            reason: reply::escape(&format!(
                "egress-milter: {} is locked ({})",
                identity.value, lock.reason
            )),
            fallback: locked_reply,
        };
    }
    info!(queue_id, identity = %identity, action = "locked", "refused: identity is locked");
    policy
        .observer()
        .refused(Some(&identity.value), RULE_LOCKED, refusal(&locked_reply), 0, queue_id);
    Verdict::Refuse(locked_reply)
}

/// How a refusal is counted: by the class of its reply.
fn refusal(reply: &Reply) -> Refusal {
    if reply.is_temporary() {
        Refusal::Tempfail
    } else {
        Refusal::Reject
    }
}
