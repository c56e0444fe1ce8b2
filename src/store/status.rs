//! What a provider knows of its store's health: whether its last call worked, the last
//! error and when, one WARN per outage, and a probe that notices the store's return
//! without waiting for the next refresh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use super::{StoreError, TokenStore};
use crate::error::Scrubber;
use crate::health::Metrics;

/// While the store fails, it is asked this often whether it answers again (one read of the
/// provider's entry). `Health::store_ok` and the next refresh then learn of its return
/// within a second, not at the next refresh (up to an hour away), for one read a second
/// per process during an outage.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The health of one provider's store, shared by the provider and its source's
/// [`SourceStore`](super::SourceStore).
pub(crate) struct StoreStatus {
    /// The provider's name, for the logs.
    provider: String,
    /// The provider's entry, for the logs and the probe.
    key: String,
    healthy: AtomicBool,
    last_error: Mutex<Option<(String, SystemTime)>>,
    /// Whether a probe is running.
    probing: AtomicBool,
    metrics: OnceLock<Metrics>,
}

impl StoreStatus {
    pub(crate) fn new(provider: String, key: String) -> Arc<Self> {
        Arc::new(Self {
            provider,
            key,
            healthy: AtomicBool::new(true),
            last_error: Mutex::default(),
            probing: AtomicBool::new(false),
            metrics: OnceLock::new(),
        })
    }

    /// Records metrics from now on; the gauge exists from the start, healthy.
    pub(crate) fn set_metrics(&self, metrics: Metrics) {
        metrics.store_call(true);
        let _ = self.metrics.set(metrics);
    }

    /// Whether the last call worked.
    pub(crate) fn ok(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The last error (scrubbed) and when it happened.
    pub(crate) fn last_error(&self) -> Option<(String, SystemTime)> {
        self.lock().clone()
    }

    /// Runs one store call with `timeout`, recording its outcome; `what` names it in the
    /// logs (`read`, `store the token`).
    pub(crate) async fn call<T>(
        self: &Arc<Self>,
        store: &Arc<dyn TokenStore>,
        what: &'static str,
        timeout: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => Err(self.failed(store, what, &error.to_string(), timeout)),
            Err(_) => Err(self.failed(
                store,
                what,
                &format!("no answer within {timeout:?}"),
                timeout,
            )),
        }
    }

    fn succeeded(&self) {
        if let Some(metrics) = self.metrics.get() {
            metrics.store_call(true);
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(
                provider = %self.provider,
                key = %self.key,
                "the token store answers again"
            );
        }
    }

    /// Records a failed call and returns its error text, scrubbed.
    fn failed(
        self: &Arc<Self>,
        store: &Arc<dyn TokenStore>,
        what: &'static str,
        error: &str,
        timeout: Duration,
    ) -> String {
        let error = format!("could not {what}: {}", Scrubber::default().text(error));
        if let Some(metrics) = self.metrics.get() {
            metrics.store_call(false);
        }
        *self.lock() = Some((error.clone(), SystemTime::now()));
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                provider = %self.provider,
                key = %self.key,
                operation = what,
                %error,
                "the token store failed: fetching tokens without it until it answers again"
            );
        }
        self.probe(store, timeout);
        error
    }

    /// Starts the probe unless one runs: every [`PROBE_INTERVAL`] it reads the provider's
    /// entry, until a call works (the probe's or another) or the provider is gone.
    fn probe(self: &Arc<Self>, store: &Arc<dyn TokenStore>, timeout: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let status: Weak<Self> = Arc::downgrade(self);
        let store = Arc::clone(store);
        let key = self.key.clone();
        let running = ProbeRunning(Arc::downgrade(self));
        drop(runtime.spawn(async move {
            let _running = running;
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(status) = status.upgrade() else {
                    return;
                };
                if status.ok() {
                    return;
                }
                if let Ok(Ok(_)) = tokio::time::timeout(timeout, store.get(&key)).await {
                    status.succeeded();
                    return;
                }
            }
        }));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, SystemTime)>> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears `probing` when the probe ends, however it ends (its runtime shut down too): the
/// next failure starts another.
struct ProbeRunning(Weak<StoreStatus>);

impl Drop for ProbeRunning {
    fn drop(&mut self) {
        if let Some(status) = self.0.upgrade() {
            status.probing.store(false, Ordering::Release);
        }
    }
}
