//! A 10,000-caller cold herd with a Google-style RS256 service account, for token-refresh,
//! gcp_auth 0.12 and yup-oauth2 12, against the same local token server, in one run.
//!
//! The token server accepts any JWT-bearer request after 100 ms (Google's token endpoint
//! answers in about that) and counts requests. Each round builds a new client from the same
//! key file (the key in `tests/keys/rsa-pkcs8.pem`, `token_uri` pointing at the server),
//! releases 10,000 tasks together through a barrier on a cold cache, and measures each
//! caller from the barrier to holding a token. The rounds alternate between the libraries.
//!
//! token-refresh signs with aws-lc-rs, as a default build does (gcp_auth signs with ring).
//! Besides the callers' latency, each round records how long after the release the first
//! token request reached the server (loopback: when it left, give or take a few µs), and
//! the summary gives its median per library.
//!
//! ```text
//! cargo run --release --manifest-path benches/compare-google/Cargo.toml -- [callers] [rounds]
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use token_refresh_emulator::{Answer, ScriptedServer};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// When the first caller of a round left the barrier: how long a library takes to start its
/// request is from then to the request's arrival at the server.
static RELEASED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
const SERVER_LATENCY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
enum Library {
    TokenRefresh,
    GcpAuth,
    YupOauth2,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let callers: usize = args.next().map_or(10_000, |a| a.parse().expect("callers"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("rounds"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(callers, rounds));
}

async fn run(callers: usize, rounds: usize) {
    // Any JWT-bearer request gets a token after the latency Google's endpoint has.
    let server = ScriptedServer::start(|request| {
        Answer::token(request.number, 3599).after(SERVER_LATENCY)
    })
    .await
    .expect("the token server starts");
    let url = server.url("/token");
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/keys/rsa-pkcs8.pem"),
    )
    .expect("the test key");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "bench",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "robot@bench.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": url,
    })
    .to_string();
    let path = std::env::temp_dir().join(format!("compare-google-{}.json", std::process::id()));
    std::fs::write(&path, &key).unwrap();

    let libraries = [
        Library::TokenRefresh,
        Library::GcpAuth,
        Library::YupOauth2,
    ];
    let mut results: Vec<(Library, Vec<u64>, Vec<Duration>, Vec<Duration>)> = libraries
        .iter()
        .map(|l| (*l, Vec::new(), Vec::new(), Vec::new()))
        .collect();
    for _ in 0..rounds {
        for (library, counts, latencies, departures) in &mut results {
            let before = server.count();
            *RELEASED.lock().unwrap() = None;
            latencies.extend(herd(*library, callers, &key, &path).await);
            let a = server.received()[before as usize].at;
            let r = RELEASED.lock().unwrap().unwrap();
            let departure = a.saturating_duration_since(r);
            eprintln!(
                "{library:?}: first request reached the server {:.2} ms after the release",
                ms(departure)
            );
            departures.push(departure);
            counts.push(server.count() - before);
        }
    }
    println!(
        "\n=== cold herd, {callers} callers × {rounds} rounds, RS256 service account, 100 ms token server ==="
    );
    let ours_p99 = p(&mut results[0].2.clone(), 0.99);
    for (library, counts, latencies, departures) in &mut results {
        let p99 = p(latencies, 0.99);
        println!(
            "{:<13} token requests per round {:?}; caller latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; p99 ratio to token-refresh {:.2}; release to first request, median {:.2} ms",
            format!("{library:?}"),
            counts,
            ms(p(latencies, 0.50)),
            ms(p99),
            ms(p(latencies, 1.0)),
            p99.as_secs_f64() / ours_p99.as_secs_f64(),
            ms(p(departures, 0.50)),
        );
    }
    std::fs::remove_file(&path).ok();
}

async fn herd(
    library: Library,
    callers: usize,
    key: &str,
    path: &std::path::Path,
) -> Vec<Duration> {
    match library {
        Library::TokenRefresh => {
            let source = token_refresh::JwtBearer::google_service_account(path, [SCOPE]).unwrap();
            release_provider(callers, token_refresh::TokenProvider::new(source)).await
        }
        Library::GcpAuth => {
            use gcp_auth::TokenProvider as _;
            let provider = Arc::new(gcp_auth::CustomServiceAccount::from_json(key).unwrap());
            release(callers, || {
                let provider = Arc::clone(&provider);
                async move {
                    provider.token(&[SCOPE]).await.expect("a token");
                }
            })
            .await
        }
        Library::YupOauth2 => {
            let account = yup_oauth2::parse_service_account_key(key).unwrap();
            let auth = Arc::new(
                yup_oauth2::ServiceAccountAuthenticator::builder(account)
                    .build()
                    .await
                    .unwrap(),
            );
            release(callers, || {
                let auth = Arc::clone(&auth);
                async move {
                    auth.token(&[SCOPE]).await.expect("a token");
                }
            })
            .await
        }
    }
}

async fn release_provider(callers: usize, provider: token_refresh::TokenProvider) -> Vec<Duration> {
    release(callers, || {
        let provider = provider.clone();
        async move {
            provider.token().await.expect("a token");
        }
    })
    .await
}

/// Spawns `callers` tasks that wait at one barrier and then each await a future from
/// `call`; returns how long each took from its release.
async fn release<F, Fut>(callers: usize, call: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (barrier, call) = (Arc::clone(&barrier), call());
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                RELEASED.lock().unwrap().get_or_insert(start);
                call.await;
                start.elapsed()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(callers);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies
}

fn p(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort_unstable();
    let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
    latencies[i.min(latencies.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
