//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

#[cfg(all(feature = "reqwest", feature = "tower"))]
pub mod cloud;
pub mod oidc_provider;
#[cfg(feature = "redis")]
pub mod redis_server;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use httpmock::MockServer;
use serde_json::{Value, json};
use token_refresh::{JwtBearer, ServiceAccount, TokenProvider, TokenProviderBuilder};

/// jsonwebtoken, a JOSE library the crate does not use, checks what the crate signs. A test
/// binary is an application: it picks jsonwebtoken's RustCrypto provider for its process,
/// so that it works whatever backends the workspace's feature unification enables (an
/// application member enables `aws_lc_rs`; with two backends and none installed,
/// jsonwebtoken panics).
pub fn jsonwebtoken() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

pub const KEY_ID: &str = "test-key-id";
pub const EMAIL: &str = "sa-test@project.serviceaccount.d21s.com";
pub const SECRET: &str = "sUp3r-s3cr3t-hmac-key-0123456789";

pub fn account() -> ServiceAccount {
    ServiceAccount::new(KEY_ID, EMAIL, SECRET)
}

/// A JWT-bearer source pointed at `server`'s `/oauth2/token`.
pub fn source(server: &MockServer) -> JwtBearer {
    JwtBearer::new(account()).token_url(server.url("/oauth2/token"))
}

/// A provider for `server` with fast retries, for real-time tests.
pub fn fast_builder(server: &MockServer) -> TokenProviderBuilder {
    TokenProvider::builder(source(server))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .cooldown(Duration::from_millis(200))
}

/// A DT-style §5.1 token response.
pub fn token_json(token: &str, expires_in: u64) -> Value {
    json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in})
}

/// Lets spawned tasks run without moving the paused clock.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Waits (real time) until `f` holds, failing the test after 10 s.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Captures everything `tracing` emits at TRACE level, with all fields.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Installs the capture as the global subscriber (once per test binary) and returns it.
    pub fn global() -> Self {
        static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let writer = capture.clone();
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .init();
                capture
            })
            .clone()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An address on loopback where nothing listens.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/oauth2/token")
}

/// One scripted answer of [`scripted_token_server`].
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: String::new(),
        }
    }
    pub fn retry_after(mut self, value: &'static str) -> Self {
        self.retry_after = Some(value);
        self
    }
    pub fn token(token: &str) -> Self {
        Self {
            status: 200,
            retry_after: None,
            body: token_json(token, 3600).to_string(),
        }
    }
}

/// Serves `replies` in order to successive token requests, then repeats the last one.
/// Requests are told apart by their assertion, so use a source with `.jti(true)`.
/// Returns the mocks, whose calls add up to the requests served.
pub async fn scripted_token_server(
    server: &MockServer,
    replies: Vec<Reply>,
) -> Vec<httpmock::Mock<'_>> {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let last = replies.len() - 1;
    let mut mocks = Vec::new();
    for (index, reply) in replies.into_iter().enumerate() {
        let seen = seen.clone();
        let mock = server
            .mock_async(move |when, then| {
                when.method("POST")
                    .path("/oauth2/token")
                    .is_true(move |req| {
                        let body = req.body_string();
                        let mut seen = seen.lock().unwrap();
                        let position = match seen.iter().position(|b| *b == body) {
                            Some(p) => p,
                            None => {
                                seen.push(body);
                                seen.len() - 1
                            }
                        };
                        position == index || (index == last && position > last)
                    });
                let then = then.status(reply.status).body(reply.body.clone());
                if let Some(after) = reply.retry_after {
                    then.header("retry-after", after);
                }
            })
            .await;
        mocks.push(mock);
    }
    mocks
}

/// Total calls served by `mocks`.
pub async fn total_calls(mocks: &[httpmock::Mock<'_>]) -> usize {
    let mut total = 0;
    for mock in mocks {
        total += mock.calls_async().await;
    }
    total
}

/// Mocks `server`'s token endpoint (`POST /oauth2/token`); `answer` sets up the response.
pub async fn token_endpoint<'a>(
    server: &'a MockServer,
    answer: impl FnOnce(httpmock::Then),
) -> httpmock::Mock<'a> {
    server
        .mock_async(|when, then| {
            when.method("POST").path("/oauth2/token");
            answer(then);
        })
        .await
}

/// What [`serve`] got: the request head and its whole body.
pub struct Received {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 server on loopback whose every answer comes from `answer`, which sees each
/// request whole. It counts requests and stops when dropped.
pub struct Served {
    pub addr: std::net::SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve<F>(answer: F) -> Served
where
    F: Fn(Received) -> http::Response<String> + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, counter) = (answer.clone(), counter.clone());
            connections.spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (answer, counter) = (answer.clone(), counter.clone());
                        async move {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let response = answer(Received {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, std::convert::Infallible>(
                                response.map(|b| http_body_util::Full::new(bytes::Bytes::from(b))),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Served {
        addr,
        requests,
        task,
    }
}

/// A response with `status`, JSON `body` and extra `headers`.
pub fn json_response(
    status: u16,
    body: &Value,
    headers: &[(&str, &str)],
) -> http::Response<String> {
    let mut response = http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body.to_string()).unwrap()
}

/// The value of form parameter `name` in a urlencoded `body`.
pub fn form_value(body: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(body).split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        (n == name).then(|| {
            let v = v.replace('+', " ");
            percent_decode(&v)
        })
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `futures` concurrently on the current task and returns their outputs in order: for
/// independent cases that each wait on their own servers.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Runs `command` to its end: whether it succeeded, and its stdout and stderr together.
pub fn finished(command: &mut std::process::Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The number a program printed after `label` at the start of a line.
pub fn printed(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs `fleet` (the `fleet` example, pointed at a store) as eight processes sharing one
/// refresh-token series of 1 s tokens for 18 s, refreshed every 0.8 s by whichever holds
/// the lease: at least 20 rotations, and no `invalid_grant` or reuse detection.
pub fn assert_fleet_rotates_a_series_without_a_reuse(fleet: &mut std::process::Command) {
    let (ok, text) = finished(fleet.args([
        "--grant",
        "refresh",
        "--workers",
        "8",
        "--callers",
        "10",
        "--ttl",
        "1",
        "--seconds",
        "18",
    ]));
    println!("{text}");
    assert!(ok, "a worker failed: {text}");
    assert!(printed(&text, "refresh grants: ") >= 20, "{text}");
    assert_eq!(printed(&text, "invalid_grant: "), 0, "{text}");
    assert_eq!(printed(&text, "reuse detections: "), 0, "{text}");
}

/// The example binary that `cargo test` built next to this test binary, with no DT
/// credentials in its environment.
pub fn example(name: &str) -> std::process::Command {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is built by `cargo test` (or `cargo build --example {name}`)",
        path.display()
    );
    let mut command = std::process::Command::new(path);
    for var in [
        "DT_CREDENTIALS_FILE",
        "DT_SERVICE_ACCOUNT_KEY_ID",
        "DT_SERVICE_ACCOUNT_SECRET",
        "DT_SERVICE_ACCOUNT_EMAIL",
    ] {
        command.env_remove(var);
    }
    command
}

/// An API route of `server` that answers `status` to `method path` requests carrying
/// `Authorization: Bearer {token}`; its calls count the sends with that token.
pub async fn api_route<'a>(
    server: &'a MockServer,
    method: httpmock::Method,
    path: &str,
    token: &str,
    status: u16,
) -> httpmock::Mock<'a> {
    let bearer = format!("Bearer {token}");
    server
        .mock_async(|when, then| {
            when.method(method)
                .path(path)
                .header("authorization", bearer);
            then.status(status);
        })
        .await
}
