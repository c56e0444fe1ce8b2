//! Probing a Tokio runtime for a driver without printing a panic.
//!
//! Tokio has no way to ask whether a runtime was built with the time or the I/O driver:
//! creating a timer or registering a socket panics without it. The probes catch that panic,
//! and [`catch_quietly`] keeps the default panic hook from printing it to stderr, where it
//! would read as a crash although the caller gets a typed error.

use std::cell::Cell;
use std::panic::{self, UnwindSafe};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// Set while this thread runs a probe whose panic is expected.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that stays silent for a probe's panic and hands
/// every other panic to the hook that was there before (the application's or the default).
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `probe`, returning `None` if it panicked; the panic is not printed.
pub(crate) fn catch_quietly<R>(probe: impl FnOnce() -> R + UnwindSafe) -> Option<R> {
    install_hook();
    let was_quiet = QUIET.with(|q| q.replace(true));
    let outcome = panic::catch_unwind(probe);
    QUIET.with(|q| q.set(was_quiet));
    outcome.ok()
}

/// The last Tokio runtime a probe found its driver on: a driver does not come or go in a
/// runtime's life, so a probe runs once per runtime instead of once per call.
pub(crate) struct Passed(AtomicU64);

impl Passed {
    pub(crate) const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Whether the probe passed on runtime `id` (the last one it passed on).
    pub(crate) fn on(&self, id: tokio::runtime::Id) -> bool {
        self.0.load(Ordering::Relaxed) == key(id)
    }

    pub(crate) fn set(&self, id: tokio::runtime::Id) {
        self.0.store(key(id), Ordering::Relaxed);
    }
}

/// A runtime id as a non-zero number (tokio's `Id` only hashes).
fn key(id: tokio::runtime::Id) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id) | 1
}
