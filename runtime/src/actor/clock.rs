//! Deadlines without a precise clock read.
//!
//! Every ask carries a deadline (`now + timeout`). Reading the precise monotonic clock costs
//! about 40 ns on a virtual machine (a quarter of a local ask's own work), while the kernel's
//! coarse clock (`CLOCK_MONOTONIC_COARSE`, updated every scheduler tick) is a plain memory read
//! of about 8 ns. A deadline does not need nanoseconds: [`now_and_deadline`] builds it from the
//! coarse clock and adds one tick of slack, so it is never earlier than the precise
//! `Instant::now() + timeout` and at most two ticks (8 ms at the usual 250 Hz) later. TiKV
//! makes the same trade for the same reason.
//!
//! The coarse reading is mapped onto [`Instant`] through a pair of readings taken once, so
//! deadlines compare with every other `Instant` (timers, `Instant::now()`). Outside Linux the
//! precise clock is used.

use std::time::Duration;

use tokio::time::Instant;

/// Now (as [`coarse_now`]), and the instant `timeout` from now: never earlier than
/// `Instant::now() + timeout` and at most two coarse clock ticks later. One clock read gives
/// both (an ask's deadline, and when it was asked for its latency). A timeout too large to
/// represent gives a deadline a century away.
pub(crate) fn now_and_deadline(timeout: Duration) -> (Instant, Instant) {
    let (now, slack) = imp::now_with_slack();
    let deadline = now
        .checked_add(timeout.saturating_add(slack))
        .unwrap_or_else(|| far_future(now));
    (now, deadline)
}

/// Now, to within a coarse clock tick (a few milliseconds), for a fraction of the cost of
/// `Instant::now()`: for measuring waits that only matter when they are long.
pub(crate) fn coarse_now() -> Instant {
    imp::now_with_slack().0
}

/// A deadline nobody will reach.
fn far_future(now: Instant) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(CENTURY).unwrap_or(now)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::OnceLock;
    use std::time::Duration;

    use tokio::time::Instant;

    /// One precise and one coarse reading taken together, and the coarse clock's resolution.
    struct Base {
        precise: Instant,
        coarse_ns: u64,
        tick: Duration,
    }

    static BASE: OnceLock<Base> = OnceLock::new();

    fn read(clock: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable `timespec`; `clock_gettime` only writes to it.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
    }

    fn base() -> Option<&'static Base> {
        let base = BASE.get_or_init(|| {
            let mut res = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: as in `read`.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
            let coarse_ns = read(libc::CLOCK_MONOTONIC_COARSE).unwrap_or(0);
            let tick = if rc == 0 && coarse_ns > 0 {
                Duration::new(res.tv_sec as u64, res.tv_nsec as u32)
            } else {
                Duration::ZERO // no coarse clock: `now_with_slack` reads the precise one
            };
            Base {
                precise: Instant::now(),
                coarse_ns,
                tick,
            }
        });
        (!base.tick.is_zero()).then_some(base)
    }

    /// The current instant, up to one tick off either way, and that tick (the slack a
    /// deadline adds so it is never early).
    pub(super) fn now_with_slack() -> (Instant, Duration) {
        if let Some(base) = base()
            && let Some(coarse) = read(libc::CLOCK_MONOTONIC_COARSE)
        {
            let since = Duration::from_nanos(coarse.saturating_sub(base.coarse_ns));
            return (base.precise + since, base.tick);
        }
        (Instant::now(), Duration::ZERO)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::time::Duration;

    use tokio::time::Instant;

    pub(super) fn now_with_slack() -> (Instant, Duration) {
        (Instant::now(), Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_never_early_and_at_most_two_ticks_late() {
        for timeout in [
            Duration::ZERO,
            Duration::from_millis(3),
            Duration::from_secs(5),
        ] {
            let before = Instant::now();
            let (_, deadline) = now_and_deadline(timeout);
            let after = Instant::now();
            assert!(
                deadline >= before + timeout,
                "deadline {:?} early",
                (before + timeout) - deadline
            );
            assert!(
                deadline <= after + timeout + Duration::from_millis(25),
                "deadline {:?} late",
                deadline - (after + timeout)
            );
        }
    }

    #[test]
    fn an_unrepresentable_timeout_gives_a_far_deadline_not_a_panic() {
        let (_, deadline) = now_and_deadline(Duration::MAX);
        assert!(deadline > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    }
}
