// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The one source of time for limits and lock expiry: real in production, manual in tests.

use governor::nanos::Nanos;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Where [`Clock::monotonic_nanos`] starts: 2^60 ns, about 36.5 years.
///
/// A bucket restored at start holds times from the previous process, up to
/// a window (or two) plus the state's age before the new clock's zero. With
/// this origin they stay positive for any age and window short of decades,
/// and there are still more than 500 years to go before `u64` ends, so the
/// limiter's saturating sums of a time and a window never saturate for a
/// real rule. The limiter's arithmetic only ever uses differences of times,
/// and a never-seen bucket (all zero) reads as one idle since long ago,
/// which it is in either case.
pub const MONOTONIC_ORIGIN: u64 = 1 << 60;

/// A monotonic clock with a matching wall clock.
///
/// Rate limiting needs monotonic time (a wall-clock jump must not release or
/// freeze a bucket); lock expiry needs wall time (`expires_at` is written in
/// the lock list as RFC 3339). A manual clock moves both together, so tests
/// can cross a rate window or a lock expiry without sleeping.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
enum ClockInner {
    Real {
        epoch: Instant,
    },
    Manual {
        elapsed_nanos: AtomicU64,
        wall_base: SystemTime,
    },
}

impl Clock {
    /// The system clocks.
    pub fn real() -> Self {
        Self {
            inner: Arc::new(ClockInner::Real { epoch: Instant::now() }),
        }
    }

    /// A clock that only moves when [`Clock::advance`] is called. Its wall
    /// time starts at the current system time.
    pub fn manual() -> Self {
        Self::manual_at(SystemTime::now())
    }

    /// A manual clock whose wall time starts at `wall`: a test's next
    /// process, started where the last one left off.
    pub fn manual_at(wall: SystemTime) -> Self {
        Self {
            inner: Arc::new(ClockInner::Manual {
                elapsed_nanos: AtomicU64::new(0),
                wall_base: wall,
            }),
        }
    }

    /// Moves a manual clock forward; a real clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let ClockInner::Manual { elapsed_nanos, .. } = &*self.inner {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            elapsed_nanos.fetch_add(by, Ordering::SeqCst);
        }
    }

    /// Monotonic nanoseconds since this clock was created.
    pub fn elapsed_nanos(&self) -> u64 {
        match &*self.inner {
            ClockInner::Real { epoch } => u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
            ClockInner::Manual { elapsed_nanos, .. } => elapsed_nanos.load(Ordering::SeqCst),
        }
    }

    /// Monotonic nanoseconds on the rate limiters' time line:
    /// [`MONOTONIC_ORIGIN`] plus [`Clock::elapsed_nanos`].
    ///
    /// Counters restored after a restart carry times from before this
    /// clock was created; starting the time line far from zero keeps them
    /// positive (see [`MONOTONIC_ORIGIN`]).
    pub fn monotonic_nanos(&self) -> u64 {
        MONOTONIC_ORIGIN.saturating_add(self.elapsed_nanos())
    }

    /// The current wall-clock time.
    pub fn wall_now(&self) -> SystemTime {
        match &*self.inner {
            ClockInner::Real { .. } => SystemTime::now(),
            ClockInner::Manual {
                elapsed_nanos,
                wall_base,
            } => *wall_base + Duration::from_nanos(elapsed_nanos.load(Ordering::SeqCst)),
        }
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.elapsed_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_monotonic_and_wall_time_together() {
        let clock = Clock::manual();
        let wall = clock.wall_now();
        assert_eq!(clock.elapsed_nanos(), 0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.elapsed_nanos(), 90_000_000_000);
        assert_eq!(
            clock.wall_now().duration_since(wall).ok(),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn the_limiters_time_line_starts_far_from_zero() {
        let clock = Clock::manual();
        assert_eq!(clock.monotonic_nanos(), MONOTONIC_ORIGIN);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.monotonic_nanos(), MONOTONIC_ORIGIN + 1_000_000_000);
        // A year back from a fresh clock is still a positive time.
        let year = Duration::from_secs(365 * 86_400).as_nanos() as u64;
        assert!(Clock::real().monotonic_nanos() > year);
    }

    #[test]
    fn real_clock_ignores_advance() {
        let clock = Clock::real();
        let before = clock.elapsed_nanos();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.elapsed_nanos() - before < 3_600_000_000_000);
    }
}
