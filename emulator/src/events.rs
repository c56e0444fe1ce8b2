//! The emulated devices' events: one ticker task, the event lines and their ids.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::race::{First, first};
use super::rfc3339;

/// What every event id starts with.
const EVENT_ID_PREFIX: &str = "evt-";

/// Shortest event interval the ticker accepts; shorter ones (zero) are raised to it, because
/// a zero period would make the ticker spin.
pub(super) const MIN_EVENT_INTERVAL: Duration = Duration::from_millis(1);

/// One device event, shared by every open stream.
#[derive(Debug)]
pub(super) struct Event {
    /// The global sequence number, from 1.
    seq: u64,
    /// The device's id.
    device: Arc<str>,
    /// Degrees Celsius, two decimals.
    temperature: f64,
    /// When the event happened, RFC 3339.
    time: String,
}

/// The sequence number in an event id of the emulator's event stream, or `None` if `event_id`
/// is not one.
///
/// Event ids are `evt-` followed by the event's global sequence number in decimal, zero-padded
/// to at least 12 digits: `evt-000000000042` is the 42nd event the emulator produced. Numbers
/// start at 1 and go up by one per event whether or not a stream is open, so a client that
/// sees two consecutive events whose numbers differ by more than one has missed the events in
/// between (while it reconnected, or because it read too slowly).
///
/// ```
/// use token_refresh_emulator::event_sequence;
///
/// assert_eq!(event_sequence("evt-000000000042"), Some(42));
/// assert_eq!(event_sequence("evt-1234567890123"), Some(1_234_567_890_123));
/// assert_eq!(event_sequence("evt-"), None);
/// assert_eq!(event_sequence("evt-+42"), None);
/// assert_eq!(event_sequence("bq3iegnbm8vg00eo6mhg"), None); // a real DT event id
/// ```
pub fn event_sequence(event_id: &str) -> Option<u64> {
    let digits = event_id.strip_prefix(EVENT_ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn event_id(seq: u64) -> String {
    format!("{EVENT_ID_PREFIX}{seq:012}")
}

/// Emits one event every interval, round-robin over `devices`, until the task is aborted.
/// The interval is re-read whenever it changes; the sequence number goes up whether or not
/// anyone listens.
pub(super) async fn run_ticker(
    events: broadcast::Sender<Arc<Event>>,
    devices: Arc<[Arc<str>]>,
    mut interval: watch::Receiver<Duration>,
) {
    let mut seq: u64 = 0;
    let mut period = (*interval.borrow_and_update()).max(MIN_EVENT_INTERVAL);
    let mut next = Instant::now().checked_add(period);
    loop {
        match first(interval.changed(), sleep_until(next)).await {
            First::Left(Err(_)) => return,
            First::Left(Ok(())) => {
                period = (*interval.borrow_and_update()).max(MIN_EVENT_INTERVAL);
                next = Instant::now().checked_add(period);
            }
            First::Right(()) => {
                seq = seq.saturating_add(1);
                let device = usize::try_from(seq - 1).unwrap_or(0) % devices.len().max(1);
                let Some(device) = devices.get(device).cloned() else {
                    return;
                };
                let event = Event {
                    seq,
                    device,
                    temperature: f64::from(fastrand::u32(1800..2600)) / 100.0,
                    time: rfc3339::format(SystemTime::now()),
                };
                // An error only means that no stream is open.
                let _ = events.send(Arc::new(event));
                // Keep the cadence; after a stall, start again from now instead of catching up.
                let now = Instant::now();
                next = next.and_then(|at| at.checked_add(period)).and_then(|at| {
                    if at < now {
                        now.checked_add(period)
                    } else {
                        Some(at)
                    }
                });
            }
        }
    }
}

/// Sleeps until `at`, or forever for `None` (a deadline too far to represent).
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Event {
    /// The event's line on a stream of `project`, newline included.
    pub(super) fn line(&self, project: &str) -> Bytes {
        let line = json!({"result": {"event": {
            "eventId": event_id(self.seq),
            "targetName": format!("projects/{project}/devices/{}", self.device),
            "eventType": "temperature",
            "data": {"temperature": {"value": self.temperature, "updateTime": self.time}},
            "timestamp": self.time,
        }}});
        to_line(&line)
    }
}

/// A heartbeat line, newline included.
pub(super) fn ping_line() -> Bytes {
    to_line(&json!({"result": {"event": {
        "eventType": "ping",
        "timestamp": rfc3339::format(SystemTime::now()),
    }}}))
}

/// The last line of a stream whose token expired or was revoked, newline included.
pub(super) fn error_line(code: i32, status: &str, message: &str) -> Bytes {
    to_line(&json!({"error": {"code": code, "message": message, "status": status}}))
}

fn to_line(value: &Value) -> Bytes {
    let mut line = value.to_string();
    line.push('\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for seq in [1, 42, 999_999_999_999, 1_000_000_000_000, u64::MAX] {
            assert_eq!(event_sequence(&event_id(seq)), Some(seq));
        }
        assert_eq!(event_id(42), "evt-000000000042");
        for bad in [
            "",
            "evt",
            "EVT-1",
            "evt-1a",
            "evt- 1",
            "evt-18446744073709551616",
        ] {
            assert_eq!(event_sequence(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_line_shape() {
        let event = Event {
            seq: 7,
            device: Arc::from("dev1"),
            temperature: 21.37,
            time: "2024-02-29T13:05:09.123456Z".into(),
        };
        let line = event.line("p1");
        assert_eq!(line.last(), Some(&b'\n'));
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            json!({"result": {"event": {
                "eventId": "evt-000000000007",
                "targetName": "projects/p1/devices/dev1",
                "eventType": "temperature",
                "data": {"temperature": {"value": 21.37, "updateTime": "2024-02-29T13:05:09.123456Z"}},
                "timestamp": "2024-02-29T13:05:09.123456Z",
            }}})
        );
    }
}
