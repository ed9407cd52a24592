//! `futures_timer::Delay` on tokio's timer.
//!
//! libp2p times everything with futures-timer 3, whose timers all live on one helper thread:
//! creating or dropping a `Delay` hands it to that thread and, most of the time, wakes it
//! with a system call. gossipsub makes a `Delay` for every message it sends, as a send
//! deadline, and drops it once the message is out; in a busy node those wakes and the
//! thread's context switches cost about a fifth of the CPU (see ARCHITECTURE, "Timers").
//!
//! This crate replaces futures-timer in the build (`[patch.crates-io]` in the workspace
//! manifest) with the same public API, [`Delay`], built on `tokio::time::Sleep`:
//!
//! - A `Delay` only records its deadline until first polled; then it becomes a tokio sleep
//!   in the runtime that polls it, an entry in that runtime's timer wheel. A deadline that
//!   has passed by the first poll is ready without touching the wheel.
//! - Outside any tokio runtime (a plain executor), the sleep lives on a small runtime of
//!   its own, started on first need on a thread named `futures-timer`.
//! - The runtime that polls a `Delay` must have its time driver enabled; every runtime in
//!   Warren is built with `enable_all`. An armed `Delay` belongs to the runtime that first
//!   polled it and must not outlive it (tokio panics when a sleep of a runtime that shut
//!   down is polled); libp2p's timers live in tasks, which die with their runtime.
//!
//! Semantics follow futures-timer: the deadline counts from [`Delay::new`] (not from the
//! first poll), a fired `Delay` stays ready, and [`Delay::reset`] arms it again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle};
use tokio::time::Sleep;

/// Further away than any timer is ever meant to wait: where deadlines that would overflow
/// [`Instant`] are put instead.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// A future that completes at a point in time.
pub struct Delay {
    deadline: Instant,
    /// Made on first poll, in the runtime polling.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay {
            deadline: deadline_after(dur),
            sleep: None,
        }
    }

    /// Arms the delay again to complete `dur` from now, whether or not it has completed.
    pub fn reset(&mut self, dur: Duration) {
        self.deadline = deadline_after(dur);
        if let Some(sleep) = &mut self.sleep {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(self.deadline));
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let sleep = match &mut this.sleep {
            Some(sleep) => sleep,
            None => {
                if Instant::now() >= this.deadline {
                    return Poll::Ready(());
                }
                this.sleep.insert(Box::pin(sleep_until(this.deadline)))
            }
        };
        sleep.as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .field("armed", &self.sleep.is_some())
            .finish()
    }
}

fn deadline_after(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// A tokio sleep in the current runtime, or in this crate's own one outside any runtime.
fn sleep_until(deadline: Instant) -> Sleep {
    let deadline = tokio::time::Instant::from_std(deadline);
    if Handle::try_current().is_ok() {
        return tokio::time::sleep_until(deadline);
    }
    let _entered = own_runtime().enter();
    tokio::time::sleep_until(deadline)
}

/// A single-threaded runtime that does nothing but run its timer, for delays polled
/// outside tokio.
fn own_runtime() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Without a timer thread no timer can ever fire; there is nothing to fall back to.
        let runtime = Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building the timer runtime failed");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("starting the timer thread failed");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(40);

    fn assert_send_sync_unpin<T: Send + Sync + Unpin>() {}

    #[test]
    fn it_is_send_sync_and_unpin_like_the_original() {
        assert_send_sync_unpin::<Delay>();
    }

    #[tokio::test]
    async fn it_completes_no_sooner_than_its_deadline() {
        let start = Instant::now();
        Delay::new(SHORT).await;
        assert!(start.elapsed() >= SHORT);
    }

    /// Longer than any delay here needs: a timer that never fires fails the test instead
    /// of hanging it.
    const NEVER: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn the_deadline_counts_from_creation_not_from_the_first_poll() {
        let mut delay = Delay::new(SHORT);
        // Time passes before the first poll (a thread sleep, so no timer is involved).
        std::thread::sleep(SHORT);
        // Already due: ready at once, without a timer entry.
        let ready = futures::poll!(&mut delay);
        assert!(ready.is_ready());
        assert!(delay.sleep.is_none());
    }

    #[tokio::test]
    async fn a_pending_delay_wakes_its_task_and_stays_ready() {
        let mut delay = Delay::new(SHORT);
        assert!(futures::poll!(&mut delay).is_pending());
        (&mut delay).await;
        assert!(futures::poll!(&mut delay).is_ready());
    }

    #[tokio::test]
    async fn reset_arms_a_completed_delay_again() {
        let mut delay = Delay::new(Duration::ZERO);
        (&mut delay).await;
        delay.reset(SHORT);
        let start = Instant::now();
        assert!(futures::poll!(&mut delay).is_pending());
        (&mut delay).await;
        assert!(start.elapsed() >= SHORT);
    }

    #[tokio::test]
    async fn reset_moves_a_pending_deadline_later() {
        let mut delay = Delay::new(SHORT);
        assert!(futures::poll!(&mut delay).is_pending());
        let start = Instant::now();
        delay.reset(SHORT * 2);
        (&mut delay).await;
        assert!(start.elapsed() >= SHORT * 2);
    }

    #[test]
    fn it_works_outside_any_tokio_runtime() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            futures::executor::block_on(Delay::new(SHORT));
            let _ = done.send(start.elapsed());
        });
        let took = finished
            .recv_timeout(NEVER)
            .expect("a delay polled outside tokio never fired");
        assert!(took >= SHORT);
    }

    #[tokio::test]
    async fn a_delay_made_outside_a_runtime_runs_inside_one() {
        let start = Instant::now();
        let delay = std::thread::spawn(|| Delay::new(SHORT)).join().unwrap();
        tokio::time::timeout(NEVER, delay)
            .await
            .expect("a delay made outside tokio never fired inside it");
        assert!(start.elapsed() >= SHORT);
    }

    #[tokio::test]
    async fn an_endless_duration_does_not_overflow() {
        let mut delay = Delay::new(Duration::MAX);
        assert!(futures::poll!(&mut delay).is_pending());
        delay.reset(Duration::MAX);
        assert!(futures::poll!(&mut delay).is_pending());
    }
}
