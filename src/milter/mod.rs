// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The milter adapter: the milter protocol in, verdicts out. The only part
//! of egress-milter that knows indymilter.

pub mod callbacks;
pub mod content;
pub mod listener;
pub mod session;
pub mod throttle;
pub mod watchdog;

use crate::config::Config;
use crate::notify::{LockEvent, Notifier, Sample};
use crate::ops::metrics::Observer;
use crate::policy::identity::Identity;
use crate::policy::{AutoLock, Trip};
use std::sync::Arc;

/// Where the milter reports what it decided: the verdict observer (metrics
/// and the activity registry) and the lock notifier. They live as long as
/// the daemon, across reloads; the policy knows neither.
#[derive(Clone)]
pub struct Reporting {
    pub observer: Arc<Observer>,
    /// `None` when nothing is to be notified (and in tests).
    pub notifier: Option<Arc<Notifier>>,
}

impl Reporting {
    /// Reports nowhere: a disabled observer and no notifier.
    pub fn none() -> Self {
        Self {
            observer: Arc::new(Observer::disabled()),
            notifier: None,
        }
    }

    /// Hands a new automatic lock to the notifier, with its evidence. Only a
    /// lock this session set is notified: not an identity already locked by
    /// a parallel session, never a refused message. Never waits.
    /// `tripping` is what the session recorded of the message that tripped
    /// the lock (only while `notify.arf_to` is set).
    pub fn new_lock(
        &self,
        config: &Config,
        lock: &AutoLock,
        identity: &Identity,
        trip: &Trip,
        queue_id: &str,
        tripping: Option<&Sample>,
    ) {
        if !lock.fresh || !config.notify.is_enabled() {
            return;
        }
        if let Some(notifier) = &self.notifier {
            let queue_ids = self.evidence_queue_ids(&lock.entry.identity, queue_id);
            let sample = config
                .notify
                .arf_enabled()
                .then(|| arf_sample(notifier, &lock.entry.identity, tripping, queue_id));
            notifier.notify(LockEvent::new(&lock.entry, identity, trip, queue_ids, sample));
        }
    }

    /// Keeps an accepted message as its identity's latest, for the sample
    /// of an ARF report should the identity be locked before its next
    /// message reaches the headers.
    pub fn accepted_sample(&self, config: &Config, identity: &str, sample: Option<Sample>, queue_id: &str) {
        if let (Some(notifier), Some(mut sample)) = (&self.notifier, sample)
            && config.notify.arf_enabled()
        {
            if queue_id != "NONE" && !queue_id.is_empty() {
                sample.queue_id = Some(queue_id.to_owned());
            }
            notifier.samples().remember(identity, sample);
        }
    }

    /// The queue id of the message that tripped the lock (none if the MTA
    /// had not assigned one yet: Postfix's "NONE" at MAIL FROM), then the
    /// identity's most recent accepted or held messages, newest first, as
    /// the activity registry remembers them (when it runs).
    fn evidence_queue_ids(&self, identity: &str, queue_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        if !queue_id.is_empty() && queue_id != "NONE" {
            ids.push(queue_id.to_owned());
        }
        if self.observer.enabled()
            && let Some(recent) = self.observer.activity().get(identity)
        {
            for q in recent.queue_ids {
                if !ids.contains(&q) {
                    ids.push(q);
                }
            }
        }
        ids
    }
}

/// The message an ARF report is about: the one that tripped the lock if
/// its headers were seen, else the identity's last accepted message, else
/// the tripping message's envelope alone (see [`crate::notify::sample`]).
fn arf_sample(notifier: &Notifier, identity: &str, tripping: Option<&Sample>, queue_id: &str) -> Arc<Sample> {
    let mut tripping = tripping.cloned().unwrap_or_default();
    if queue_id != "NONE" && !queue_id.is_empty() {
        tripping.queue_id = Some(queue_id.to_owned());
    }
    if tripping.headers().is_empty()
        && let Some(last) = notifier.samples().recall(identity)
    {
        return last;
    }
    Arc::new(tripping)
}
