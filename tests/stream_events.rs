//! Does `examples/stream_events`, run as a user runs it, keep a device event stream going
//! for 15 s while its 3 s tokens expire and are revoked — whichever way the server ends the
//! stream — without missing events while connected and without a 401 spin?
//!
//! Each test runs the example binary that `cargo test` builds against its own in-process
//! emulator, in real time; the three runs go in parallel, in about 15 s together.
#![cfg(feature = "reqwest")]

mod common;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::json;
use token_refresh_emulator::{Emulator, Stats, StreamEnd, event_sequence};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// How long the example runs (`--duration`).
const RUN: Duration = Duration::from_secs(15);
/// Lifetime of the emulator's tokens: five of them in a run.
const TOKEN_TTL: Duration = Duration::from_secs(3);
const EVENT_INTERVAL: Duration = Duration::from_millis(150);
/// From when every token is revoked (at the next event), counted from the start of the
/// example.
const REVOKE_AT: Duration = Duration::from_secs(7);
/// The example is killed if it runs this long: nothing may hang.
const KILL_AFTER: Duration = Duration::from_secs(40);

/// A DT credentials file naming the emulator's account and token endpoint; removed on drop.
struct CredentialsFile(PathBuf);

impl CredentialsFile {
    fn new(emulator: &Emulator, tag: &str) -> Self {
        let account = emulator.account();
        let path = std::env::temp_dir().join(format!(
            "stream-events-{}-{}.json",
            tag.replace(' ', "-"),
            std::process::id()
        ));
        let content = json!({"serviceAccount": {
            "keyId": account.key_id(),
            "secret": account.expose_secret(),
            "email": account.email(),
            "algorithm": "HS256",
            "tokenEndpoint": emulator.token_url(),
        }});
        std::fs::write(&path, content.to_string()).unwrap();
        Self(path)
    }
}

impl Drop for CredentialsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one run of the example did.
struct Run {
    status: ExitStatus,
    /// Every stdout line with when it was read, from the start of the example.
    lines: Vec<(Duration, String)>,
    stderr: String,
    stats: Stats,
    /// When every token was revoked, if it was.
    revoked_at: Option<Duration>,
}

impl Run {
    fn stdout(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    /// Everything it printed, for assertion messages.
    fn transcript(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}\nemulator: {:?}",
            self.stdout(),
            self.stderr,
            self.stats
        )
    }

    /// The event lines: (when, sequence number).
    fn events(&self) -> Vec<(Duration, u64)> {
        self.lines
            .iter()
            .filter_map(|(at, line)| {
                let id = line.strip_prefix("event ")?.split(' ').next()?;
                let seq = event_sequence(id)
                    .unwrap_or_else(|| panic!("an emulator event id: {line}\n{}", self.stdout()));
                Some((*at, seq))
            })
            .collect()
    }

    /// The reasons given by the `reconnecting in …s: <why>` lines.
    fn reconnects(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|(_, line)| {
                let rest = line.strip_prefix("reconnecting in ")?;
                Some(rest.split_once(": ").map_or(rest, |(_, why)| why))
            })
            .collect()
    }

    /// The first `reconnecting in …s: <why>` line from `at` on: when, and why.
    fn reconnect_after(&self, at: Duration) -> Option<(Duration, &str)> {
        self.lines.iter().find_map(|(when, line)| {
            let why = line.strip_prefix("reconnecting in ")?.split_once(": ")?.1;
            (*when >= at).then_some((*when, why))
        })
    }

    /// The sequence numbers of the events of each connection, in order.
    fn connections(&self) -> Vec<Vec<u64>> {
        let mut connections = vec![Vec::new()];
        for (_, line) in &self.lines {
            if line.starts_with("reconnecting in ") || line == "stream opened" {
                if connections.last().is_some_and(|c| !c.is_empty()) {
                    connections.push(Vec::new());
                }
            } else if let Some(id) = line
                .strip_prefix("event ")
                .and_then(|l| l.split(' ').next())
            {
                connections.last_mut().unwrap().extend(event_sequence(id));
            }
        }
        connections.retain(|c| !c.is_empty());
        connections
    }
}

/// Runs the example for [`RUN`] against an emulator whose streams end as `end` says,
/// revoking every token at its first event after [`REVOKE_AT`].
async fn run_example(end: StreamEnd, tag: &str) -> Run {
    let emulator = Arc::new(
        Emulator::builder()
            .token_ttl(TOKEN_TTL)
            .event_interval(EVENT_INTERVAL)
            .start()
            .await
            .unwrap(),
    );
    emulator.set_stream_end(end);
    let credentials = CredentialsFile::new(&emulator, tag);
    let mut child = Command::from(common::example("stream_events"))
        .env("DT_CREDENTIALS_FILE", &credentials.0)
        .args([
            "--api-url",
            &emulator.api_url(),
            "--project",
            "p",
            "--duration",
            &RUN.as_secs().to_string(),
            "--ping-interval",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (last_line, mut lines_seen) = tokio::sync::watch::channel(String::new());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stdout = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = stdout.next_line().await.unwrap() {
            last_line.send_replace(line.clone());
            lines.push((started.elapsed(), line));
        }
        lines
    });
    // Revokes mid-stream: at the first event printed after `REVOKE_AT`.
    let revoker = tokio::spawn({
        let emulator = Arc::clone(&emulator);
        async move {
            tokio::time::sleep(REVOKE_AT).await;
            lines_seen.mark_unchanged();
            while lines_seen.changed().await.is_ok() {
                if lines_seen.borrow_and_update().starts_with("event ") {
                    emulator.revoke_all();
                    return Some(started.elapsed());
                }
            }
            None
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    // On a timeout the child is dropped, and so killed.
    let status = tokio::time::timeout(KILL_AFTER, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the example still ran after {KILL_AFTER:?}: killed"))
        .unwrap();
    Run {
        status,
        revoked_at: revoker.await.unwrap(),
        lines: stdout.await.unwrap(),
        stderr: stderr.await.unwrap(),
        stats: emulator.stats(),
    }
}

/// What every end mode must give.
fn assert_streamed_through(run: &Run) {
    let transcript = run.transcript();
    assert!(
        run.status.success(),
        "exit status {}\n{transcript}",
        run.status
    );

    // Events throughout the run: in each third of it.
    let events = run.events();
    for third in 0..3u32 {
        let (from, to) = (RUN * third / 3, RUN * (third + 1) / 3);
        assert!(
            events.iter().any(|(at, _)| (from..to).contains(at)),
            "no event between {from:?} and {to:?}\n{transcript}"
        );
    }
    // Most of them: the emulator's ticker numbered every event it produced, and only the
    // reconnects (about half a second each) may lose some.
    let produced = events.iter().map(|&(_, seq)| seq).max().unwrap();
    assert!(
        events.len() as u64 * 2 >= produced,
        "{} of {produced} events printed\n{transcript}",
        events.len()
    );
    assert!(
        events.len() as u64 * 2 >= run.stats.events_sent,
        "{} of the {} events sent printed\n{transcript}",
        events.len(),
        run.stats.events_sent
    );

    // No event skipped while connected.
    for connection in run.connections() {
        for pair in connection.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "event {} skipped within a connection\n{transcript}",
                pair[0] + 1
            );
        }
    }

    // The revocation ended the stream at once, and it came back soon.
    let revoked_at = run
        .revoked_at
        .unwrap_or_else(|| panic!("no event after {REVOKE_AT:?} to revoke at\n{transcript}"));
    let (dropped_at, _) = run.reconnect_after(revoked_at).unwrap();
    assert!(
        dropped_at - revoked_at < Duration::from_secs(2),
        "revoked at {revoked_at:?}, reconnecting at {dropped_at:?}\n{transcript}"
    );
    let resumed_at = events.iter().map(|&(at, _)| at).find(|&at| at > dropped_at);
    assert!(
        resumed_at.is_some_and(|at| at - revoked_at < Duration::from_secs(4)),
        "revoked at {revoked_at:?}, events again at {resumed_at:?}\n{transcript}"
    );

    // About one token per token lifetime, plus one for the revocation.
    let lifetimes = (RUN.as_secs_f64() / TOKEN_TTL.as_secs_f64()).ceil() as u64;
    let tokens = run.stats.token_requests;
    assert!(
        (lifetimes - 1..=lifetimes + 1 + 2).contains(&tokens),
        "{tokens} token requests in {RUN:?} with {TOKEN_TTL:?} tokens and one revocation\n{transcript}"
    );

    // The tokens expired under the stream, and it carried on — without a 401 spin.
    let reconnects = run.reconnects();
    assert!(
        (3..=12).contains(&reconnects.len()),
        "{} reconnects\n{transcript}",
        reconnects.len()
    );
    assert!(
        run.stats.streams_opened <= 13,
        "{} streams opened\n{transcript}",
        run.stats.streams_opened
    );
    assert!(
        run.stats.api_unauthorized <= 4,
        "{} requests refused with 401\n{transcript}",
        run.stats.api_unauthorized
    );
    let summary = format!("events {}, reconnects {}", events.len(), reconnects.len());
    assert_eq!(
        run.lines.last().map(|(_, l)| l.as_str()),
        Some(summary.as_str()),
        "{transcript}"
    );
    assert_eq!(
        run.lines.first().map(|(_, l)| l.as_str()),
        Some("stream opened"),
        "no emulator banner with --api-url\n{transcript}"
    );
}

/// The stream ended by the revocation says `why`.
fn assert_revocation_reason(run: &Run, why: &str) {
    let revoked_at = run.revoked_at.unwrap();
    let (_, said) = run.reconnect_after(revoked_at).unwrap();
    assert!(said.contains(why), "{said:?}\n{}", run.transcript());
}

/// Reports the figures of a run and its lines other than events (shown with `--nocapture`).
fn report(tag: &str, run: &Run) {
    eprintln!(
        "{tag}: {} events printed (emulator sent {}), {} reconnects, {} token requests, \
         {} streams opened, {} API 401s",
        run.events().len(),
        run.stats.events_sent,
        run.reconnects().len(),
        run.stats.token_requests,
        run.stats.streams_opened,
        run.stats.api_unauthorized
    );
    for (at, line) in &run.lines {
        if !line.starts_with("event ") {
            eprintln!("{tag}: {:5.2}s {line}", at.as_secs_f64());
        }
    }
}

/// The end modes under test, with a tag for file names and reports.
const MODES: [(StreamEnd, &str); 3] = [
    (StreamEnd::Error { code: 16 }, "code 16"),
    (StreamEnd::Error { code: 401 }, "code 401"),
    (StreamEnd::Close, "close"),
];

/// The run of `MODES[mode]`. The first test to ask starts all three runs at once, each on
/// its own thread and runtime, so that they take 15 s together whatever the number of test
/// threads (libtest runs only as many tests at once as there are cores).
fn run_of(mode: usize) -> Run {
    static RUNS: OnceLock<Vec<Mutex<Option<mpsc::Receiver<Run>>>>> = OnceLock::new();
    let runs = RUNS.get_or_init(|| {
        MODES
            .iter()
            .map(|&(end, tag)| {
                let (done, run) = mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap();
                    let _ = done.send(runtime.block_on(run_example(end, tag)));
                });
                Mutex::new(Some(run))
            })
            .collect()
    });
    let run = runs[mode]
        .lock()
        .unwrap()
        .take()
        .expect("one test per mode");
    let run = run
        .recv()
        .unwrap_or_else(|_| panic!("the {} run failed (its panic is above)", MODES[mode].1));
    report(MODES[mode].1, &run);
    run
}

#[test]
fn streams_through_expiry_and_revocation_with_grpc_error_lines() {
    let run = run_of(0);
    assert_streamed_through(&run);
    assert!(
        run.reconnects()
            .iter()
            .any(|why| why.contains("UNAUTHENTICATED") && why.contains("expired")),
        "{}",
        run.transcript()
    );
    assert_revocation_reason(
        &run,
        "16 UNAUTHENTICATED: the access token has been revoked",
    );
}

#[test]
fn streams_through_expiry_and_revocation_with_http_error_lines() {
    let run = run_of(1);
    assert_streamed_through(&run);
    assert!(
        run.reconnects()
            .iter()
            .any(|why| why.contains("401") && why.contains("expired")),
        "{}",
        run.transcript()
    );
    assert_revocation_reason(&run, "401 UNAUTHORIZED: the access token has been revoked");
}

#[test]
fn streams_through_expiry_and_revocation_with_dropped_connections() {
    let run = run_of(2);
    assert_streamed_through(&run);
    assert!(
        run.reconnects()
            .iter()
            .all(|why| why.starts_with("connection lost") || why.contains("401")),
        "{}",
        run.transcript()
    );
    assert_revocation_reason(&run, "connection lost");
}
