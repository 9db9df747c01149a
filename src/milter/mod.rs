// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The milter adapter: the milter protocol in, verdicts out. The only part
//! of egress-milter that knows indymilter.

pub mod callbacks;
pub mod listener;
pub mod session;
pub mod throttle;
pub mod watchdog;

use crate::config::Config;
use crate::notify::{LockEvent, Notifier};
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
    pub fn new_lock(&self, config: &Config, lock: &AutoLock, identity: &Identity, trip: &Trip, queue_id: &str) {
        if !lock.fresh || !config.notify.is_enabled() {
            return;
        }
        if let Some(notifier) = &self.notifier {
            let queue_ids = self.evidence_queue_ids(&lock.entry.identity, queue_id);
            notifier.notify(LockEvent::new(&lock.entry, identity, trip, queue_ids));
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
