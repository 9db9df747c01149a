// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Which identity sent each recently accepted message, by queue id, so that
//! a bounce the MTA generates later for that message is charged to the
//! identity that sent it, and to no one else.
//!
//! Bounded: at most `capacity` messages are remembered, the oldest
//! forgotten first, and none longer than [`MAX_AGE`] (Postfix gives up on a
//! message after `maximal_queue_lifetime`, 5 days by default, and bounces
//! it then). An entry is a queue id and an identity: about 100 bytes plus
//! the identity's length.

use crate::policy::identity::Identity;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// The longest a message is remembered.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 24 * 3600);

/// The last accepted messages' senders.
pub struct SentLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_queue_id: HashMap<Box<str>, Sent>,
    /// Queue ids in the order they were recorded, with when.
    order: VecDeque<(Box<str>, u64)>,
}

struct Sent {
    identity: Identity,
    /// Monotonic nanoseconds when it was recorded.
    at: u64,
}

impl SentLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remembers that `identity` sent the message `queue_id` at `now`
    /// (monotonic nanoseconds). A queue id already known is not taken over.
    pub fn record(&self, queue_id: &str, identity: &Identity, now: u64) {
        if self.capacity == 0 || queue_id.is_empty() || queue_id == "NONE" {
            return;
        }
        let mut inner = self.lock();
        inner.expire(now);
        if inner.by_queue_id.contains_key(queue_id) {
            return;
        }
        while inner.order.len() >= self.capacity {
            inner.pop_oldest();
        }
        let key: Box<str> = queue_id.into();
        inner.order.push_back((key.clone(), now));
        inner.by_queue_id.insert(
            key,
            Sent {
                identity: identity.clone(),
                at: now,
            },
        );
    }

    /// Who sent `queue_id`, if it is remembered.
    pub fn sender(&self, queue_id: &str, now: u64) -> Option<Identity> {
        let mut inner = self.lock();
        inner.expire(now);
        inner.by_queue_id.get(queue_id).map(|s| s.identity.clone())
    }

    /// Most messages it remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn expire(&mut self, now: u64) {
        let max_age = u64::try_from(MAX_AGE.as_nanos()).unwrap_or(u64::MAX);
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_sub(*at) > max_age)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, at)) = self.order.pop_front()
            && self.by_queue_id.get(&id).is_some_and(|s| s.at == at)
        {
            self.by_queue_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentitySource;

    fn id(v: &str) -> Identity {
        Identity {
            value: v.into(),
            source: IdentitySource::Auth,
        }
    }

    #[test]
    fn remembers_the_sender_of_each_queue_id() {
        let log = SentLog::new(10);
        log.record("4ABC", &id("a@x.org"), 1);
        log.record("4DEF", &id("b@x.org"), 2);
        log.record("4ABC", &id("mallory@x.org"), 3);
        assert_eq!(log.sender("4ABC", 4).map(|i| i.value), Some("a@x.org".into()));
        assert_eq!(log.sender("4DEF", 4).map(|i| i.value), Some("b@x.org".into()));
        assert_eq!(log.sender("4XYZ", 4), None);
        log.record("NONE", &id("c@x.org"), 5);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn is_bounded_in_number_and_age() {
        let log = SentLog::new(3);
        for i in 0..10 {
            log.record(&format!("Q{i}"), &id("a@x.org"), i);
        }
        assert_eq!(log.len(), 3);
        assert!(log.sender("Q6", 10).is_none());
        assert!(log.sender("Q7", 10).is_some());
        let later = 9 + u64::try_from(MAX_AGE.as_nanos()).unwrap() + 1;
        assert!(log.sender("Q9", later).is_none());
        assert!(log.is_empty());
    }
}
