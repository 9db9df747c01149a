// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Rate-limited log lines: at most one line of a kind per interval, which
//! says how many events it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of rate-limited log line.
pub struct Throttle {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    /// Events since the last line.
    pending: u64,
}

impl Throttle {
    /// At most one line every `interval` (a `static` may hold one).
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State { last: None, pending: 0 }),
        }
    }

    /// Counts one event. `Some(n)` when a line is due: `n` is the number of
    /// events it stands for (this one and those not logged since the last).
    pub fn note(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.pending += 1;
        if s.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_logs_the_first_event_then_one_line_per_interval_with_a_count() {
        let interval = Duration::from_secs(10);
        let t = Throttle::new(interval);
        assert_eq!(t.note(), Some(1));
        assert_eq!(t.note(), None);
        assert_eq!(t.note(), None);
        // As if the last line were an interval old.
        t.state.lock().unwrap().last = Instant::now().checked_sub(interval);
        assert_eq!(t.note(), Some(3));
        assert_eq!(t.note(), None);
    }
}
