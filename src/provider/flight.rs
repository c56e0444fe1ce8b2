//! The refresh in flight: one task per refresh whose outcome every waiter shares, and its
//! hand-off between Tokio runtimes (a refresh stranded on a runtime that idles or shut down
//! is restarted by a waiter on its own).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::runtime::{self, Handle};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::token::AccessToken;

use super::cache::{self, later};
use super::{Inner, State, Want};

/// How often a caller waiting on a refresh that runs on *another* Tokio runtime checks that
/// the runtime is still running it. A quarter second is short next to any token wait worth
/// noticing and costs one no-op task on that runtime per check.
const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long that check may take: a runtime that does not run a no-op task within a quarter
/// second is idle (its `block_on` returned) or gone, and the refresh is restarted here.
const STALL_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a caller restarts a refresh that its *own* runtime dropped before giving up
/// with [`Error::RefreshAborted`]: only a runtime that is shutting down does that, and a
/// caller must not spin on it.
const MAX_LOCAL_RESTARTS: u32 = 3;

/// How many waiters the gate wakes at once when it opens: each one woken hands its permit
/// on to the next in line, so a herd wakes in arrival order, at most this many runnable at
/// a time. Waking all of them at once overflows a worker's local run queue (256 tasks) into
/// the global one and serves the first arrivals last: that added about 5 ms to a 10,000-caller
/// herd's p99 (`benches/compare-google`, side by side on two cores). 64 fits a local queue
/// with room for the rest of the runtime's work and keeps both workers busy.
const GATE_WIDTH: usize = 64;

/// Why a refresh runs: the `reason` field of its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    /// No token was ever obtained.
    First,
    /// The cached token reached its proactive refresh point (a background refresh).
    Proactive,
    /// The cached token reached its hard margin.
    Expired,
    /// The API rejected a token it had accepted before (`reject`, within the allowance).
    Revoked,
    /// The API rejected a token it never accepted (`reject`, within the storm guard).
    Rejected,
    /// [`invalidate`](crate::TokenProvider::invalidate) dropped the cached token.
    Invalidated,
    /// A caller needs a token that lasts longer than the cached one
    /// ([`MinValidity`](crate::MinValidity), `token_valid_for`).
    MinValidity,
}

impl Reason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::First => "first",
            Reason::Proactive => "proactive",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::Rejected => "rejected",
            Reason::Invalidated => "invalidated",
            Reason::MinValidity => "min-validity",
        }
    }
}

/// One refresh: a task on `runtime` that publishes its outcome.
pub(super) struct Flight {
    id: u64,
    /// Why it runs.
    pub(super) reason: Reason,
    /// Whether its token came from the token store (another process fetched it).
    from_store: AtomicBool,
    started: Instant,
    runtime: Handle,
    /// Set once, when the refresh ends or is lost; `gate` and `done` wake the waiters then.
    /// A herd of callers on a cold cache waits on this: registering costs one lock, and
    /// reading the outcome one atomic load.
    outcome: OnceLock<Outcome>,
    /// Opened (given [`GATE_WIDTH`] permits) when the refresh ends, is lost or ticks:
    /// callers without a timer wait for a permit and give it back at once, which wakes the
    /// next in line. Open, it stays open, so no wake-up is lost between a caller's last look
    /// at the outcome and its wait. A caller holds a permit only from its wake-up to its next
    /// poll (or its drop, which gives it back), like a queued `tokio::sync::Mutex` lock. A
    /// semaphore wakes a herd of 10,000 with half the p99 of `Notify::notify_waiters`
    /// (measured side by side on two cores), and a herd is what waits here.
    gate: Semaphore,
    gate_opened: AtomicBool,
    /// Wakes the callers that wait with a timer (a deadline of their own, or a refresh on
    /// another runtime), when the gate opens.
    done: Notify,
    /// When the refresh task opens the gate even without an outcome: `max_wait` after it
    /// started, the earliest a caller without its own deadline may give up. Such callers
    /// on the flight's runtime wait at the gate alone, without a timer each: registering
    /// 10,000 timers costs a cold herd more than the rest of its wait.
    tick_at: Instant,
    /// Set when the refresh task has woken its waiters at `tick_at`.
    ticked: AtomicBool,
    /// Whether a waiter is checking that `runtime` still runs the refresh.
    probing: AtomicBool,
    progress: Mutex<Progress>,
    /// The storm guard's interval, if a rejection forced this refresh: a store entry
    /// carries it to the rest of the fleet.
    pub(super) forced: Option<Duration>,
}

enum Outcome {
    Ready(Result<AccessToken>),
    /// The task is gone without an outcome (its runtime shut down, or it was stranded on a
    /// runtime that stopped running it): a waiter starts a new refresh.
    Lost,
}

impl Outcome {
    fn waited(&self) -> Waited {
        match self {
            Outcome::Ready(result) => Waited::Done(result.clone()),
            Outcome::Lost => Waited::Lost,
        }
    }
}

#[derive(Default)]
struct Progress {
    attempt: u32,
    last_error: Option<Error>,
    /// Whether the refresh waits for another process of the fleet, the holder of the
    /// token store's lease.
    waiting_on_lease: bool,
}

enum Waited {
    Done(Result<AccessToken>),
    Lost,
    TimedOut,
}

impl Inner {
    /// A token for a caller that missed the fast path at `started`.
    pub(super) async fn token_slow(
        self: &Arc<Self>,
        want: Want,
        started: Instant,
    ) -> Result<AccessToken> {
        if let Some(error) = &self.misconfigured {
            return Err(error.clone());
        }
        // Only the runtime's id is kept: a waiter holding the handle would touch its shared
        // reference count again when it wakes, 10,000 times at once for a herd.
        let here = Handle::try_current().map_err(|_| Error::NoRuntime)?.id();
        self.ensure_time(here)?;
        let max_deadline = later(started, self.config.max_wait);
        let deadline = want.deadline.map_or(max_deadline, |d| d.min(max_deadline));
        let mut local_restarts = 0;
        // The clock is read once per wake-up: a herd of callers on a cold cache reads it
        // 10,000 times at once, and on a VM a read can cost as much as the rest of a wake-up.
        let mut now = started;
        loop {
            let flight = match self.joinable() {
                Some(flight) => flight,
                None => match self.join_or_start(want.min_validity)? {
                    Joined::Token(token) => return Ok(token),
                    Joined::Wait(flight) => flight,
                    Joined::Started(flight, launch) => {
                        launch.start().await;
                        flight
                    }
                },
            };
            let waited = self.wait(&flight, here, deadline, now).await;
            now = Instant::now();
            match waited {
                Waited::Done(Ok(token)) => {
                    // Delivered too late to be used (a slow waiter): go round again.
                    if cache::usable(&self.config, &token, now) {
                        return Ok(token);
                    }
                }
                Waited::Done(Err(error)) => return Err(error),
                Waited::Lost if flight.runtime.id() == here => {
                    local_restarts += 1;
                    if local_restarts > MAX_LOCAL_RESTARTS {
                        return Err(Error::RefreshAborted);
                    }
                }
                Waited::Lost => {}
                Waited::TimedOut => {
                    let progress = flight.progress();
                    return Err(Error::WaitTimeout {
                        waited: now.saturating_duration_since(started),
                        attempt: progress.attempt.max(1),
                        last_error: progress.last_error.map(Box::new),
                        waiting_on_lease: progress.waiting_on_lease,
                    });
                }
            }
        }
    }

    /// The refresh in flight, without the state lock: what a caller that missed the fast
    /// path while a refresh runs would get from [`join_or_start`](Self::join_or_start)
    /// too (the fast path hands out every usable token that lasts long enough while a
    /// refresh runs), for a herd of callers on a cold cache.
    fn joinable(&self) -> Option<Arc<Flight>> {
        if !self.refreshing.load(Ordering::Acquire) {
            return None;
        }
        self.in_flight
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Under the state lock: a usable cached token (starting a background refresh if it is
    /// due), the refresh in flight to wait on, or a new one.
    fn join_or_start(self: &Arc<Self>, min: Duration) -> Result<Joined> {
        let mut state = self.lock_state();
        let now = Instant::now();
        let cached = self.read_cache().clone();
        let had_token = cached.is_some();
        let usable = cached.filter(|c| now < c.usable_until);
        if let Some(cached) = &usable
            && cached.lasts(now, min)
        {
            if now >= cached.refresh_at {
                self.refresh_in_background(&mut state, now);
            }
            return Ok(Joined::Token(cached.token.clone()));
        }
        if let Some(flight) = &state.flight {
            return Ok(Joined::Wait(Arc::clone(flight)));
        }
        if let Some(failure) = &state.failure
            && now < failure.retry_at
        {
            // In the cool-down a token that is usable, if short of `min`, beats the error.
            return match usable {
                Some(cached) => Ok(Joined::Token(cached.token.clone())),
                None => Err(failure.error.clone()),
            };
        }
        let reason = match state.pending {
            Some(reason) => reason,
            None if usable.is_some() => Reason::MinValidity,
            None if had_token || state.last_refresh.is_some() => Reason::Expired,
            None => Reason::First,
        };
        let (flight, launch) = self.start_flight(&mut state, reason)?;
        Ok(Joined::Started(flight, launch))
    }

    /// Waits for `flight`'s outcome until `deadline`; `now` is a recent reading of the clock.
    /// A flight on another runtime is checked every [`STALL_PROBE_INTERVAL`]; if that runtime
    /// no longer runs it, it is marked lost.
    async fn wait(
        &self,
        flight: &Arc<Flight>,
        here: runtime::Id,
        deadline: Instant,
        mut now: Instant,
    ) -> Waited {
        let foreign = flight.runtime.id() != here;
        let mut woken = false;
        loop {
            if let Some(outcome) = flight.outcome.get() {
                return outcome.waited();
            }
            if std::mem::take(&mut woken) {
                now = Instant::now();
            }
            if now >= deadline {
                return Waited::TimedOut;
            }
            // `ticked` is set before the gate opens: a caller that reads it unset still
            // finds the gate open, or is woken when it opens.
            if !foreign && deadline >= flight.tick_at && !flight.ticked.load(Ordering::Acquire) {
                // Given back at once: that wakes the next waiter (see `GATE_WIDTH`).
                drop(flight.gate.acquire().await);
            } else {
                // Registered before the outcome is read again, so an opening in between
                // still wakes it.
                let done = flight.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if let Some(outcome) = flight.outcome.get() {
                    return outcome.waited();
                }
                // Boxed: the timer and the probe would make every waiter's future twice as
                // large, and most wait without them.
                Box::pin(self.wait_with_timer(flight, done, foreign, deadline, now)).await;
            }
            woken = true;
        }
    }

    /// One wait on `done` of a caller with its own deadline or on another runtime than the
    /// flight's: until `deadline`, or [`STALL_PROBE_INTERVAL`] for a foreign flight, which is
    /// probed then.
    async fn wait_with_timer(
        &self,
        flight: &Arc<Flight>,
        done: Pin<&mut tokio::sync::futures::Notified<'_>>,
        foreign: bool,
        deadline: Instant,
        now: Instant,
    ) {
        let wake = if foreign {
            deadline.min(now + STALL_PROBE_INTERVAL)
        } else {
            deadline
        };
        if tokio::time::timeout_at(wake, done).await.is_err()
            && foreign
            && Instant::now() < deadline
        {
            self.probe(flight).await;
        }
    }

    /// Checks that `flight`'s runtime still runs tasks; takes the refresh over if not. One
    /// waiter probes at a time.
    async fn probe(&self, flight: &Arc<Flight>) {
        if flight.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _reset = ResetOnDrop(&flight.probing);
        let ping = flight.runtime.spawn(async {});
        let alive = matches!(
            tokio::time::timeout(STALL_PROBE_TIMEOUT, ping).await,
            Ok(Ok(()))
        );
        if alive {
            return;
        }
        let mut state = self.lock_state();
        if state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            tracing::warn!(
                refresh_id = flight.id,
                "the token refresh is stranded on a Tokio runtime that no longer runs it; \
                 restarting it on this one"
            );
            self.set_flight(&mut state, None);
            flight.publish(Outcome::Lost);
        }
    }

    /// Fails with [`Error::TimeDisabled`] on a runtime without the time driver, instead of
    /// panicking in a timer later.
    fn ensure_time(&self, id: runtime::Id) -> Result<()> {
        if self.time_checked.on(id) {
            return Ok(());
        }
        if self.lock_state().no_time == Some(id) {
            return Err(Error::TimeDisabled);
        }
        // Creating a timer is the only way to ask; it panics without the driver.
        let has_time =
            crate::quiet_panic::catch_quietly(|| drop(tokio::time::sleep(Duration::ZERO)))
                .is_some();
        if !has_time {
            self.lock_state().no_time = Some(id);
            return Err(Error::TimeDisabled);
        }
        self.time_checked.set(id);
        Ok(())
    }

    /// Sets or clears the in-flight refresh; `state` must be locked.
    fn set_flight(&self, state: &mut State, flight: Option<Arc<Flight>>) {
        *self
            .in_flight
            .write()
            .unwrap_or_else(PoisonError::into_inner) = flight.clone();
        self.refreshing.store(flight.is_some(), Ordering::Release);
        state.flight = flight;
    }

    /// Starts one background refresh unless one runs or a cool-down is on.
    fn refresh_in_background(self: &Arc<Self>, state: &mut State, now: Instant) {
        let cooling = state.failure.as_ref().is_some_and(|f| now < f.retry_at);
        if state.flight.is_none() && !cooling {
            tracing::debug!("access token nears expiry: refreshing it in the background");
            // Without a runtime the caller just keeps the valid token; the next one retries.
            // Spawned at once: this caller has its token and does not wait for the refresh.
            if let Ok((_, launch)) = self.start_flight(state, Reason::Proactive) {
                launch.spawn();
            }
        }
    }

    /// Sets up a refresh on the current runtime, to be launched once the state lock is
    /// released.
    fn start_flight(
        self: &Arc<Self>,
        state: &mut State,
        reason: Reason,
    ) -> Result<(Arc<Flight>, Launch)> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        // What an invalidation or a rejection asked for is this refresh.
        state.pending = None;
        let background = reason == Reason::Proactive;
        let id = state.next_flight_id;
        state.next_flight_id += 1;
        let started = Instant::now();
        let flight = Arc::new(Flight {
            id,
            reason,
            from_store: AtomicBool::new(false),
            started,
            runtime: runtime.clone(),
            outcome: OnceLock::new(),
            gate: Semaphore::new(0),
            gate_opened: AtomicBool::new(false),
            done: Notify::new(),
            tick_at: later(started, self.config.max_wait),
            ticked: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            progress: Mutex::default(),
            forced: state.storm.take_forced(),
        });
        self.set_flight(state, Some(Arc::clone(&flight)));
        let span = tracing::debug_span!(
            parent: None,
            "token_refresh",
            provider = %self.config.name,
            refresh_id = id,
            background
        );
        span.follows_from(tracing::Span::current());
        // Built outside the task, so that a task dropped before its first poll (its
        // runtime is shutting down) still reports the refresh lost.
        let guard = FlightGuard {
            inner: Arc::clone(self),
            flight: Arc::clone(&flight),
            finished: false,
        };
        let task = Box::pin(
            async move {
                let mut guard = guard;
                let (inner, flight) = (Arc::clone(&guard.inner), Arc::clone(&guard.flight));
                let fetch = inner.fetch(&flight);
                tokio::pin!(fetch);
                let result = match tokio::time::timeout_at(flight.tick_at, fetch.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => {
                        // Waiters without a timer of their own decide now.
                        flight.ticked.store(true, Ordering::Release);
                        flight.open_gate();
                        fetch.await
                    }
                };
                if let Ok(token) = &result {
                    tracing::info!(
                        provider = %inner.config.name,
                        reason = flight.reason.as_str(),
                        from = if flight.from_store.load(Ordering::Relaxed) {
                            "token store"
                        } else {
                            "token endpoint"
                        },
                        attempt = flight.progress().attempt.max(1),
                        expires_in_secs = token.expires_in().as_secs(),
                        "access token refreshed"
                    );
                }
                guard.finish(result);
            }
            .instrument(span),
        );
        Ok((flight, Launch { runtime, task }))
    }
}

/// How a cold start ended for the caller: a token after all, a refresh to wait on, or a
/// refresh it set up and launches.
enum Joined {
    Token(AccessToken),
    Wait(Arc<Flight>),
    Started(Arc<Flight>, Launch),
}

/// A refresh set up under the state lock and not yet running.
#[must_use = "a refresh that is not launched never runs (dropping it reports it lost)"]
struct Launch {
    runtime: Handle,
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Launch {
    /// Runs the refresh as a task of its own.
    fn spawn(self) {
        drop(self.runtime.spawn(self.task));
    }

    /// Runs the refresh's first step in the caller's own poll, then hands the rest to a
    /// task. The caller that found the cache cold signs its assertion and opens the
    /// connection now: a task spawned while the runtime's queues hold the herd this caller
    /// came with starts only after the scheduler has polled them (milliseconds for 10,000
    /// callers). A caller cancelled later leaves the task running, as always.
    ///
    /// Whatever the step registers with the caller's waker (a socket, a timer) is
    /// registered again with the task's at its first poll; the caller may get one spurious
    /// wake-up.
    async fn start(self) {
        let Launch { runtime, mut task } = self;
        let finished =
            std::future::poll_fn(|cx| std::task::Poll::Ready(task.as_mut().poll(cx).is_ready()))
                .await;
        if !finished {
            drop(runtime.spawn(task));
        }
    }
}

impl Flight {
    /// Sets the outcome (the first one set stays) and wakes every waiter.
    fn publish(&self, outcome: Outcome) {
        if self.outcome.set(outcome).is_ok() {
            self.open_gate();
        }
    }

    /// Wakes every waiter: opens the gate (once) and notifies those with a timer.
    fn open_gate(&self) {
        if !self.gate_opened.swap(true, Ordering::AcqRel) {
            self.gate.add_permits(GATE_WIDTH);
        }
        self.done.notify_waiters();
    }

    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progress(&self) -> Progress {
        let progress = self.lock_progress();
        Progress {
            attempt: progress.attempt,
            last_error: progress.last_error.clone(),
            waiting_on_lease: progress.waiting_on_lease,
        }
    }

    pub(super) fn set_waiting_on_lease(&self, waiting: bool) {
        self.lock_progress().waiting_on_lease = waiting;
    }

    /// The token came from the token store, not the token endpoint.
    pub(super) fn took_from_store(&self) {
        self.from_store.store(true, Ordering::Relaxed);
    }

    pub(super) fn set_attempt(&self, attempt: u32) {
        self.lock_progress().attempt = attempt;
    }

    pub(super) fn set_last_error(&self, error: Error) {
        self.lock_progress().last_error = Some(error);
    }
}

/// Publishes a refresh's outcome; if the task is dropped unfinished, reports it lost.
struct FlightGuard {
    inner: Arc<Inner>,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    fn finish(&mut self, result: Result<AccessToken>) {
        self.finished = true;
        let inner = &self.inner;
        let mut state = inner.lock_state();
        if !state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            // Taken over by a waiter on another runtime: its outcome decides.
            return;
        }
        inner.set_flight(&mut state, None);
        inner.settle(&mut state, &result, self.flight.started.elapsed());
        // Woken without the lock held: waking a herd of 10,000 takes milliseconds, and
        // callers that come meanwhile take the cached token without waiting for the lock.
        drop(state);
        self.flight.publish(Outcome::Ready(result));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished: its runtime shut down (a panicking source is caught and
        // finishes normally). A waiting caller restarts the refresh.
        let mut state = self.inner.lock_state();
        if state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            self.inner.set_flight(&mut state, None);
        }
        tracing::debug!("token refresh dropped with its runtime; a waiting caller restarts it");
        self.flight.publish(Outcome::Lost);
    }
}

/// Clears a flag when dropped (a probe that finished or was cancelled).
struct ResetOnDrop<'a>(&'a AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
