//! Probing a Tokio runtime for a driver without printing a panic.
//!
//! Tokio has no way to ask whether a runtime was built with the time or the I/O driver:
//! creating a timer or registering a socket panics without it. The probes catch that panic,
//! and [`catch_quietly`] keeps the default panic hook from printing it to stderr, where it
//! would read as a crash although the caller gets a typed error.

use std::cell::Cell;
use std::panic::{self, UnwindSafe};
use std::sync::Once;

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
