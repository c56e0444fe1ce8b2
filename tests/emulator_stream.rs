//! Does the emulator's device event stream behave like DT's `devices:stream`: NDJSON events
//! with gap-revealing ids, pings, and the right ending when its token expires, is revoked or
//! the connection drops?

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_refresh::{JwtBearer, TokenProvider};
use token_refresh_emulator::{Emulator, StreamEnd, event_sequence};

/// Longest wait for one line when one is expected.
const LINE_WAIT: Duration = Duration::from_secs(3);

/// A fast ticker, so that tests see events quickly.
const FAST: Duration = Duration::from_millis(50);

async fn emulator(event_interval: Duration) -> Emulator {
    Emulator::builder()
        .event_interval(event_interval)
        .start()
        .await
        .unwrap()
}

async fn token(emu: &Emulator) -> String {
    let provider = TokenProvider::new(JwtBearer::new(emu.account()));
    provider.token().await.unwrap().expose_secret().to_owned()
}

fn stream_url(emu: &Emulator, project: &str, query: &str) -> String {
    format!("{}/projects/{project}/devices:stream{query}", emu.api_url())
}

async fn open_raw(emu: &Emulator, token: Option<&str>, query: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(stream_url(emu, "p1", query));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("stream request")
}

/// Opens a stream of project `p1` that must answer 200 with NDJSON.
async fn open(emu: &Emulator, token: &str, query: &str) -> Lines {
    let response = open_raw(emu, Some(token), query).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    Lines {
        response,
        buf: Vec::new(),
    }
}

/// What reading a stream gave.
#[derive(Debug)]
enum Next {
    Line(Value),
    /// The body ended cleanly.
    End,
    /// The body read failed: the connection was dropped.
    Failed,
}

/// Splits a streamed body into JSON lines.
struct Lines {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Next {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Next::Line(serde_json::from_slice(&line).expect("a JSON line"));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    assert!(self.buf.is_empty(), "a partial line at the end of the body");
                    return Next::End;
                }
                Err(_) => return Next::Failed,
            }
        }
    }

    /// The next line or ending, failing the test if nothing comes within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Next {
        tokio::time::timeout(wait, self.next())
            .await
            .unwrap_or_else(|_| panic!("nothing on the stream within {wait:?}"))
    }

    /// The next line, which must come within [`LINE_WAIT`].
    async fn line(&mut self) -> Value {
        match self.next_within(LINE_WAIT).await {
            Next::Line(line) => line,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    /// The next temperature event, which must come within [`LINE_WAIT`].
    async fn event(&mut self) -> Value {
        let line = self.line().await;
        assert_eq!(kind(&line), "temperature", "{line}");
        line
    }

    /// Reads until the body ends or fails, within `wait`; returns what came before.
    async fn rest(&mut self, wait: Duration) -> (Vec<Value>, Next) {
        let mut lines = Vec::new();
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Next::Line(line) => lines.push(line),
                end => return (lines, end),
            }
        }
    }

    /// Every line that arrives within `wait` (the stream must stay open that long).
    async fn lines_for(&mut self, wait: Duration) -> Vec<Value> {
        let mut lines = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return lines,
                Ok(Next::Line(line)) => lines.push(line),
                Ok(end) => panic!("the stream ended early: {end:?}"),
            }
        }
    }
}

/// `temperature`, `ping`, or `error` for the last line.
fn kind(line: &Value) -> &str {
    if line.get("error").is_some() {
        return "error";
    }
    line["result"]["event"]["eventType"]
        .as_str()
        .expect("an eventType")
}

fn sequence(line: &Value) -> u64 {
    let id = line["result"]["event"]["eventId"]
        .as_str()
        .expect("an eventId");
    event_sequence(id).unwrap_or_else(|| panic!("not an emulator event id: {id}"))
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn assert_rfc3339(value: &Value) {
    let text = value.as_str().expect("a timestamp string");
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 27
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            26 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape_ok, "not RFC 3339 UTC: {text}");
    assert!(text > "2020-01-01", "{text}");
}

fn error_line(code: i32, message: &str, status: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

#[tokio::test]
async fn events_arrive_in_order_with_consecutive_sequence_numbers() {
    let emu = emulator(FAST).await;
    let devices = emu.device_ids();
    assert_eq!(devices.len(), 3);
    let mut stream = open(&emu, &token(&emu).await, "").await;
    let mut previous: Option<u64> = None;
    for _ in 0..7 {
        let line = stream.event().await;
        let event = &line["result"]["event"];
        let seq = sequence(&line);
        if let Some(previous) = previous {
            assert_eq!(seq, previous + 1, "{line}");
        }
        previous = Some(seq);
        // Round-robin over the devices, by sequence number.
        let device = &devices[usize::try_from((seq - 1) % 3).unwrap()];
        assert_eq!(event["targetName"], format!("projects/p1/devices/{device}"));
        let temperature = &event["data"]["temperature"];
        assert!(temperature["value"].as_f64().is_some(), "{line}");
        assert_rfc3339(&temperature["updateTime"]);
        assert_rfc3339(&event["timestamp"]);
        let keys: Vec<&String> = event.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            5,
            "eventId, targetName, eventType, data, timestamp: {line}"
        );
    }
}

#[tokio::test]
async fn the_project_in_the_path_names_the_targets() {
    let emu = emulator(FAST).await;
    let response = reqwest::Client::new()
        .get(format!("{}/projects/my-proj/devices:stream", emu.api_url()))
        .bearer_auth(token(&emu).await)
        .send()
        .await
        .unwrap();
    let mut stream = Lines {
        response,
        buf: Vec::new(),
    };
    let line = stream.event().await;
    let target = line["result"]["event"]["targetName"].as_str().unwrap();
    assert!(target.starts_with("projects/my-proj/devices/"), "{target}");
}

#[tokio::test]
async fn every_open_stream_gets_the_same_events() {
    let emu = emulator(FAST).await;
    let token = token(&emu).await;
    let mut a = open(&emu, &token, "").await;
    let mut b = open(&emu, &token, "").await;
    // Both are subscribed once each has seen an event; from then on they see the same ones.
    let (first_a, first_b) = (sequence(&a.event().await), sequence(&b.event().await));
    let start = first_a.max(first_b) + 1;
    let mut seen = [Vec::new(), Vec::new()];
    for (stream, seen) in [&mut a, &mut b].into_iter().zip(&mut seen) {
        while seen.len() < 3 {
            let seq = sequence(&stream.event().await);
            if seq >= start {
                seen.push(seq);
            }
        }
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], vec![start, start + 1, start + 2]);
}

#[tokio::test]
async fn pings_come_at_the_ping_interval_and_are_not_events() {
    // No event within the test: every line is a ping.
    let emu = emulator(Duration::from_secs(3600)).await;
    let mut stream = open(&emu, &token(&emu).await, "?ping_interval=200ms").await;
    let started = Instant::now();
    let lines = stream.lines_for(Duration::from_millis(1100)).await;
    assert!(
        (3..=7).contains(&lines.len()),
        "{} pings in 1.1 s at 200 ms: {lines:?}",
        lines.len()
    );
    for line in &lines {
        let event = &line["result"]["event"];
        assert_eq!(event["eventType"], "ping", "{line}");
        assert_rfc3339(&event["timestamp"]);
        assert_eq!(event.as_object().unwrap().len(), 2, "{line}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = emu.stats();
    assert_eq!((stats.streams_opened, stats.events_sent), (1, 0));

    // DT's `10s` form; no ping within a short wait, but the stream is open.
    let mut slow = open(&emu, &token(&emu).await, "?ping_interval=10s").await;
    assert!(slow.lines_for(Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn without_ping_interval_there_are_no_pings() {
    let emu = emulator(Duration::from_millis(100)).await;
    let mut stream = open(&emu, &token(&emu).await, "").await;
    let lines = stream.lines_for(Duration::from_millis(700)).await;
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(lines.iter().all(|l| kind(l) == "temperature"), "{lines:?}");
}

#[tokio::test]
async fn a_bad_ping_interval_is_400_with_dt_s_error_body() {
    let emu = emulator(FAST).await;
    let token = token(&emu).await;
    for query in [
        "?ping_interval=soon",
        "?ping_interval=0s",
        "?ping_interval=10",
    ] {
        let response = open_raw(&emu, Some(&token), query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("ping_interval"));
        assert!(body["help"].is_string(), "{body}");
    }
    // The token is checked first.
    assert_eq!(
        open_raw(&emu, None, "?ping_interval=soon").await.status(),
        401
    );
    assert_eq!(emu.stats().streams_opened, 0);
}

#[tokio::test]
async fn revoke_all_ends_an_open_stream_with_an_error_line_at_once() {
    let emu = emulator(FAST).await;
    let mut stream = open(&emu, &token(&emu).await, "").await;
    stream.event().await;
    let revoked_at = Instant::now();
    emu.revoke_all();
    let (lines, end) = stream.rest(Duration::from_secs(2)).await;
    let elapsed = revoked_at.elapsed();
    assert!(matches!(end, Next::End), "a clean end: {end:?}");
    let (last, before) = lines.split_last().expect("an error line");
    assert_eq!(
        *last,
        error_line(16, "the access token has been revoked", "UNAUTHENTICATED")
    );
    assert!(before.iter().all(|l| kind(l) == "temperature"), "{lines:?}");
    assert!(before.len() <= 2, "events after the revocation: {lines:?}");
    // At once, not at the token's expiry an hour away (a generous bound for a busy machine).
    assert!(elapsed < Duration::from_millis(1_500), "took {elapsed:?}");

    // A fresh token opens a new stream.
    let mut again = open(&emu, &token(&emu).await, "").await;
    again.event().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_s_ttl_runs_out() {
    let emu = Emulator::builder()
        .token_ttl(Duration::from_secs(1))
        .event_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let issued_at = Instant::now();
    let mut stream = open(&emu, &token(&emu).await, "?ping_interval=100ms").await;
    let (lines, end) = stream.rest(Duration::from_secs(4)).await;
    let elapsed = issued_at.elapsed();
    assert!(matches!(end, Next::End), "a clean end: {end:?}");
    assert_eq!(
        lines.last(),
        Some(&error_line(
            16,
            "the access token has expired",
            "UNAUTHENTICATED"
        ))
    );
    assert!(
        lines.len() > 5,
        "events and pings before the end: {lines:?}"
    );
    assert!(
        Duration::from_millis(900) <= elapsed && elapsed < Duration::from_secs(3),
        "ended after {elapsed:?}"
    );
}

#[tokio::test]
async fn stream_end_close_drops_the_connection_without_an_error_line() {
    let emu = emulator(FAST).await;
    emu.set_stream_end(StreamEnd::Close);
    let mut stream = open(&emu, &token(&emu).await, "").await;
    stream.event().await;
    emu.revoke_all();
    let (lines, end) = stream.rest(Duration::from_secs(2)).await;
    assert!(matches!(end, Next::Failed), "a failed read: {end:?}");
    assert!(lines.iter().all(|l| kind(l) == "temperature"), "{lines:?}");
}

#[tokio::test]
async fn stream_end_error_uses_the_code_and_its_status() {
    let emu = emulator(FAST).await;
    for (code, status) in [
        (401, "UNAUTHORIZED"),
        (13, "UNKNOWN"),
        (16, "UNAUTHENTICATED"),
    ] {
        emu.set_stream_end(StreamEnd::Error { code });
        let mut stream = open(&emu, &token(&emu).await, "").await;
        stream.event().await;
        emu.revoke_all();
        let (lines, end) = stream.rest(Duration::from_secs(2)).await;
        assert!(matches!(end, Next::End), "{code}: {end:?}");
        assert_eq!(
            lines.last(),
            Some(&error_line(
                code,
                "the access token has been revoked",
                status
            ))
        );
    }
}

#[tokio::test]
async fn close_streams_drops_every_open_stream_s_connection() {
    let emu = emulator(FAST).await;
    let token = token(&emu).await;
    // The default end mode writes an error line; a drop must not.
    let mut a = open(&emu, &token, "").await;
    let mut b = open(&emu, &token, "?ping_interval=100ms").await;
    a.event().await;
    b.line().await;
    let closed_at = Instant::now();
    emu.close_streams();
    for stream in [&mut a, &mut b] {
        let (lines, end) = stream.rest(Duration::from_secs(2)).await;
        assert!(matches!(end, Next::Failed), "a failed read: {end:?}");
        assert!(lines.iter().all(|l| kind(l) != "error"), "{lines:?}");
    }
    assert!(closed_at.elapsed() < Duration::from_millis(1_500));

    // Streams opened afterwards are not affected, and the token is still good.
    let mut c = open(&emu, &token, "").await;
    let lines = c.lines_for(Duration::from_millis(300)).await;
    assert!(lines.len() >= 2, "{lines:?}");
}

#[tokio::test]
async fn a_missing_unknown_or_revoked_token_is_401_at_open() {
    let emu = emulator(FAST).await;
    let revoked = token(&emu).await;
    emu.revoke_all();
    for token in [None, Some("bogus"), Some(revoked.as_str())] {
        let response = open_raw(&emu, token, "").await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], 401, "{body}");
        assert!(
            body["error"].is_string() && body["help"].is_string(),
            "{body}"
        );
    }
    let stats = emu.stats();
    assert_eq!((stats.api_unauthorized, stats.streams_opened), (3, 0));

    // Only GET opens a stream.
    let response = reqwest::Client::new()
        .post(stream_url(&emu, "p1", ""))
        .bearer_auth(token(&emu).await)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(emu.stats().streams_opened, 0);
}

#[tokio::test]
async fn an_expired_token_is_401_at_open() {
    let emu = Emulator::builder()
        .token_ttl(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let token = token(&emu).await;
    assert_eq!(open_raw(&emu, Some(&token), "").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(open_raw(&emu, Some(&token), "").await.status(), 401);
}

#[test]
fn event_sequence_parses_emulator_ids_only() {
    assert_eq!(event_sequence("evt-000000000001"), Some(1));
    assert_eq!(event_sequence("evt-000000000042"), Some(42));
    assert_eq!(event_sequence("evt-1000000000000"), Some(1_000_000_000_000));
    for bad in [
        "",
        "evt-",
        "evt-4a",
        "evt--1",
        "evt-+1",
        "EVT-1",
        "42",
        "bq3iegnbm8vg00eo6mhg",
    ] {
        assert_eq!(event_sequence(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn stats_count_streams_and_events_but_not_pings() {
    let emu = emulator(FAST).await;
    let token = token(&emu).await;
    let mut a = open(&emu, &token, "").await;
    let mut b = open(&emu, &token, "?ping_interval=30ms").await;
    for _ in 0..3 {
        a.event().await;
    }
    // Stop the ticker (the next event is an hour away), then drain both streams.
    emu.set_event_interval(Duration::from_secs(3600));
    let mut events = 3;
    let mut pings = 0;
    for stream in [&mut a, &mut b] {
        for line in stream.lines_for(Duration::from_millis(400)).await {
            match kind(&line) {
                "temperature" => events += 1,
                "ping" => pings += 1,
                other => panic!("unexpected {other} line: {line}"),
            }
        }
    }
    // `b` may have opened after the first of `a`'s three events.
    assert!(events >= 5, "{events}");
    assert!(pings >= 5, "{pings}");
    let stats = emu.stats();
    assert_eq!(stats.streams_opened, 2);
    assert_eq!(
        stats.events_sent, events,
        "every event line, and nothing else"
    );
    assert_eq!(stats.api_requests, 2);
}

#[tokio::test]
async fn set_event_interval_changes_the_pace() {
    let emu = emulator(Duration::from_secs(3600)).await;
    let mut stream = open(&emu, &token(&emu).await, "").await;
    assert!(
        stream
            .lines_for(Duration::from_millis(300))
            .await
            .is_empty()
    );
    emu.set_event_interval(FAST);
    let lines = stream.lines_for(Duration::from_millis(500)).await;
    assert!(lines.len() >= 4, "{lines:?}");
}

#[tokio::test]
async fn dropping_the_emulator_ends_open_streams() {
    let emu = emulator(FAST).await;
    let mut stream = open(&emu, &token(&emu).await, "").await;
    stream.event().await;
    drop(emu);
    let (_, end) = stream.rest(Duration::from_secs(2)).await;
    assert!(!matches!(end, Next::Line(_)));
}
