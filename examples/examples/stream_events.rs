//! A DT device event stream that outlives its access tokens.
//!
//! It streams a project's device events (`GET {api}/projects/{project}/devices:stream`, one
//! JSON object per line) through a `reqwest-middleware` client with `AuthMiddleware`, and
//! keeps streaming while the tokens that open the stream expire or are revoked:
//!
//! - each stream is opened with the request extension `MinValidity`, so it never starts on
//!   a token about to expire, and with `?ping_interval=…`, so the server sends heartbeats;
//! - when the server ends the stream with an error line saying the token is no good (code
//!   16 `UNAUTHENTICATED`, or 401), that exact token — the one in the opening response's
//!   extensions — is reported with `TokenProvider::reject` (storm-guarded) before
//!   reconnecting, so the next stream gets a fresh one;
//! - a dropped connection, a stream silent for more than twice the ping interval plus a
//!   second, an error status at open and a transient token error all lead to a reconnect,
//!   with exponential backoff and jitter (from about 0.5 s up to about 30 s, back to the
//!   start after a stream that delivered events); a permanent token error (bad
//!   credentials) ends the program with status 1.
//!
//! ```text
//! cargo run --example stream_events -- --duration 40
//! cargo run --example stream_events -- [--api-url URL] [--project ID] [--duration SECS] [--ping-interval SECS]
//! ```
//!
//! Credentials come from `ServiceAccount::discover()`, as in `refresh_loop`: the file named by
//! `DT_CREDENTIALS_FILE`, else the `DT_SERVICE_ACCOUNT_*` variables; then `--project` is
//! required (exit status 2 without it). With none set (and no `--api-url`), it starts the
//! built-in emulator with 30 s tokens and an event every 0.5 s, says so on its first line,
//! and streams the project `emulated-project`: a token expires every half minute and the
//! stream carries on. Credentials that are set but broken end it with their error (exit
//! status 1).
//!
//! Output, one line each:
//!
//! ```text
//! stream opened
//! event evt-000000000042 temperature projects/p/devices/d 21.37
//! reconnecting in 0.5s: stream error 16 UNAUTHENTICATED: the access token has expired
//! events 57, reconnects 1
//! ```
//!
//! Heartbeats are not printed. The last line is the summary, printed after `--duration`
//! (exit status 0) or Ctrl-C (likewise).

mod common;

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::Value;
use token_refresh::{AccessToken, AuthMiddleware, Error, JwtBearer, MinValidity, TokenProvider};

/// The project streamed from the emulator unless `--project` says otherwise.
const EMULATED_PROJECT: &str = "emulated-project";

/// Token lifetime of the emulator in the demo: short enough to show a reconnect quickly.
const DEMO_TTL: Duration = Duration::from_secs(30);

/// A new stream asks for a token that lasts this many ping intervals, so it does not open
/// on a token about to expire (the provider caps it at half the token's lifetime).
const MIN_VALIDITY_PINGS: u32 = 3;

/// First wait before reconnecting: long enough not to hammer a server that just dropped us,
/// short enough that a routine token change loses under a second of events.
const BACKOFF_START: Duration = Duration::from_millis(500);

/// Longest wait before reconnecting.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

const USAGE: &str = "\
usage: stream_events [--api-url URL] [--project ID] [--duration SECS] [--ping-interval SECS]

Streams a DT project's device events and reconnects with a fresh token whenever the stream ends.
Credentials: DT_CREDENTIALS_FILE, or DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and
DT_SERVICE_ACCOUNT_EMAIL; with none set, the built-in emulator (30 s tokens).

  --api-url URL         API base URL (default: DT's; without credentials, the built-in emulator's)
  --project ID          the project (required with DT credentials; emulated-project with the emulator)
  --duration SECS       stop after this long and exit 0 (default: run until Ctrl-C)
  --ping-interval SECS  heartbeat interval asked of the server (default: 10)
  -h, --help            print this and exit";

struct Args {
    api_url: Option<String>,
    project: Option<String>,
    duration: Option<Duration>,
    ping_interval: Duration,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        api_url: None,
        project: None,
        duration: None,
        ping_interval: Duration::from_secs(10),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--api-url" => args.api_url = Some(value()?),
            "--project" => args.project = Some(value()?),
            "--duration" => args.duration = Some(seconds(&flag, &value()?)?),
            "--ping-interval" => {
                args.ping_interval = seconds(&flag, &value()?)?;
                if args.ping_interval < Duration::from_millis(1) {
                    return Err("--ping-interval must be at least 1 ms".into());
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or(format!(
            "{flag} takes a number of seconds ≥ 0, not {value:?}"
        ))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Keep the setup alive for the whole run: its emulator, if any, stops when dropped.
    let parse = || parse_args(std::env::args().skip(1));
    let (args, setup) = match common::start("stream_events", USAGE, DEMO_TTL, parse, |a: &Args| {
        a.api_url.clone()
    })
    .await
    {
        Ok(started) => started,
        Err(code) => return code,
    };
    let project = match (&args.project, &setup.emulator) {
        (Some(project), _) => project.clone(),
        (None, Some(_)) => EMULATED_PROJECT.to_owned(),
        (None, None) => {
            eprintln!("--project is required with DT credentials\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let url = match stream_url(&setup.api_url, &project, args.ping_interval) {
        Ok(url) => url,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let provider = TokenProvider::new(JwtBearer::new(setup.account.clone()));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    let mut streamer = Streamer {
        client,
        provider,
        url,
        ping_interval: args.ping_interval,
        events: 0,
        reconnects: 0,
    };
    let fatal = tokio::select! {
        error = streamer.run() => Some(error),
        () = stopped(args.duration) => None,
    };
    println!(
        "events {}, reconnects {}",
        streamer.events, streamer.reconnects
    );
    match fatal {
        Some(error) => {
            eprintln!("stream_events: {error}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

/// `{api}/projects/{project}/devices:stream?ping_interval=…`.
fn stream_url(api: &str, project: &str, ping_interval: Duration) -> Result<Url, String> {
    let mut url = Url::parse(api).map_err(|e| format!("--api-url {api:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("--api-url {api:?} is not a base URL"))?
        .pop_if_empty()
        .extend(["projects", project, "devices:stream"]);
    // DT's form is `10s`; the emulator also takes milliseconds.
    let ping = if ping_interval.subsec_nanos() == 0 {
        format!("{}s", ping_interval.as_secs())
    } else {
        format!("{}ms", ping_interval.as_millis())
    };
    url.query_pairs_mut().append_pair("ping_interval", &ping);
    Ok(url)
}

/// Resolves after `duration`, or on Ctrl-C.
async fn stopped(duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handler: only the timer stops us.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = timer => {}
        () = ctrl_c => {}
    }
}

/// Opens the stream again and again, printing its events.
struct Streamer {
    client: ClientWithMiddleware,
    provider: TokenProvider,
    url: Url,
    ping_interval: Duration,
    events: u64,
    reconnects: u64,
}

/// Why a stream could not be opened.
enum OpenFailure {
    /// Worth another try after a backoff.
    Retry(String),
    /// A token error that retrying does not cure (bad credentials, configuration).
    Fatal(Error),
}

impl Streamer {
    /// Streams until a permanent token error, which it returns.
    async fn run(&mut self) -> Error {
        let mut backoff = Backoff::new();
        loop {
            let why = match self.open().await {
                Ok(stream) => {
                    println!("stream opened");
                    let (delivered, why) = self.follow(stream).await;
                    if delivered {
                        backoff.reset();
                    }
                    why
                }
                Err(OpenFailure::Retry(why)) => why,
                Err(OpenFailure::Fatal(error)) => return error,
            };
            let delay = backoff.next_delay();
            self.reconnects += 1;
            println!("reconnecting in {:.1}s: {why}", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
        }
    }

    async fn open(&self) -> Result<Stream, OpenFailure> {
        let response = self
            .client
            .get(self.url.clone())
            .with_extension(MinValidity(self.ping_interval * MIN_VALIDITY_PINGS))
            .send()
            .await
            .map_err(send_failure)?;
        let token = response.extensions().get::<AccessToken>().cloned();
        let status = response.status();
        if status.is_success() {
            return Ok(Stream {
                response,
                token,
                buf: Vec::new(),
                // Two heartbeats missed, and a second for the network.
                silence: self.ping_interval * 2 + Duration::from_secs(1),
            });
        }
        if status == StatusCode::UNAUTHORIZED
            && let Some(token) = &token
        {
            // The middleware already resent once with a fresh token, if it could.
            self.provider.reject(token);
        }
        Err(OpenFailure::Retry(format!("the API answered {status}")))
    }

    /// Prints the stream's events until it ends. Returns whether it delivered any, and why
    /// it ended.
    async fn follow(&mut self, mut stream: Stream) -> (bool, String) {
        let mut delivered = false;
        loop {
            let line = match stream.next_line().await {
                Ok(line) => line,
                Err(why) => return (delivered, why),
            };
            match parse_line(&line) {
                Line::Event(event) => {
                    println!("{}", describe(&event));
                    self.events += 1;
                    delivered = true;
                }
                Line::Error(error) => {
                    if error.rejects_token()
                        && let Some(token) = &stream.token
                    {
                        self.provider.reject(token);
                    }
                    return (delivered, format!("stream error {error}"));
                }
                // Heartbeats, and lines this program does not know.
                Line::Other => {}
            }
        }
    }
}

/// What sending the opening request failed with.
fn send_failure(error: reqwest_middleware::Error) -> OpenFailure {
    match Error::find(&error) {
        Some(token_error) if !token_error.is_transient() => OpenFailure::Fatal(token_error.clone()),
        Some(token_error) => OpenFailure::Retry(format!("no access token: {token_error}")),
        None => OpenFailure::Retry(format!("request failed: {}", chain(&error))),
    }
}

/// An error with its sources, `a: b: c`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text = format!("{text}: {error}");
        source = error.source();
    }
    text
}

/// One open stream's body, read in chunks and split into lines.
struct Stream {
    response: reqwest::Response,
    /// The token that opened the stream: the one to reject if the stream says it is no good.
    token: Option<AccessToken>,
    buf: Vec<u8>,
    /// How long the stream may stay silent before it counts as dead.
    silence: Duration,
}

impl Stream {
    /// The next line, newline included, or why the stream is over.
    async fn next_line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=end).collect());
            }
            match tokio::time::timeout(self.silence, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => return Err("the server ended the stream".into()),
                Ok(Err(error)) => return Err(format!("connection lost: {}", chain(&error))),
                Err(_) => {
                    return Err(format!(
                        "nothing received for {:.1}s: the stream is presumed dead",
                        self.silence.as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// What a line of the stream says.
enum Line {
    /// A device event (the `event` object).
    Event(Value),
    /// The stream's last line: `{"error": {...}}`.
    Error(StreamError),
    /// A heartbeat, an empty line, or anything else.
    Other,
}

fn parse_line(line: &[u8]) -> Line {
    let Ok(mut value) = serde_json::from_slice::<Value>(line) else {
        return Line::Other;
    };
    if let Some(error) = value.get("error") {
        return Line::Error(StreamError::of(error));
    }
    match value.pointer_mut("/result/event").map(Value::take) {
        Some(event) if event["eventType"] != "ping" => Line::Event(event),
        _ => Line::Other,
    }
}

/// `event evt-000000000042 temperature projects/p/devices/d 21.37`: the id, the type, the
/// device and, where the event has one, the `value` of its data.
fn describe(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or("?");
    let kind = text("eventType");
    let mut line = format!("event {} {kind} {}", text("eventId"), text("targetName"));
    if let Some(value) = event["data"][kind].get("value") {
        line = format!("{line} {value}");
    }
    line
}

/// The error line that ends a stream.
struct StreamError {
    code: Option<i64>,
    status: String,
    message: String,
}

impl StreamError {
    fn of(error: &Value) -> Self {
        let code = &error["code"];
        Self {
            // A number, or as DT's REST errors may have it, a string.
            code: code
                .as_i64()
                .or_else(|| code.as_str().and_then(|c| c.parse().ok())),
            status: error["status"].as_str().unwrap_or_default().to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Whether it says the token is no good: gRPC `UNAUTHENTICATED` (16) or HTTP 401.
    fn rejects_token(&self) -> bool {
        matches!(self.code, Some(16 | 401))
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{code}")?,
            None => f.write_str("?")?,
        }
        if !self.status.is_empty() {
            write!(f, " {}", self.status)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Exponential backoff with jitter between reconnects.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }

    /// Back to the shortest wait, after a stream that worked.
    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// The wait before the next attempt: the current step ±25 %, so that clients dropped
    /// together do not come back together. Each call doubles the step, up to the cap.
    fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(BACKOFF_CAP);
        step.mul_f64(0.75 + 0.5 * fastrand::f64())
    }
}
