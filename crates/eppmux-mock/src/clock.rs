//! The clock of the mock's network model: waits that end within tens of microseconds of their
//! deadline, so that a configured round trip, login time or processing time is what a client
//! measures.
//!
//! tokio's timer has millisecond ticks and rounds every deadline up to the next tick (its driver
//! parks in `epoll_wait`, whose timeout is in milliseconds): a 20 ms round trip came out at
//! 21.4–21.6 ms, and every ceiling computed from the nominal figures was off by as much. async-io's
//! timers are driven by a reactor that arms a `timerfd` with nanosecond resolution, so they end
//! at the deadline plus the kernel's timer slack (50 µs by default) and one wake-up. Its reactor
//! runs on a thread of its own and wakes tokio tasks like any other waker, so nothing else in the
//! mock changes; this module only picks which timer a wait uses.

use std::time::Duration;

use tokio::time::Instant;

/// Waits until `at`; a moment already past costs nothing (not even a yield).
pub(crate) async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        async_io::Timer::at(at.into_std()).await;
    }
}

/// Waits `d`; zero costs nothing.
pub(crate) async fn sleep(d: Duration) {
    if !d.is_zero() {
        async_io::Timer::after(d).await;
    }
}
