//! `GET /v2/projects/{project}/devices:stream`: DT's device event stream, one long-lived
//! response of newline-delimited JSON.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::body::Body;
use super::events::{self, Event};
use super::form::parse_form;
use super::race::{First, first};
use super::responses::{Hangup, dt_error};
use super::{Bearer, Shared, StreamEnd};

/// The content type of the stream, newline-delimited JSON, as DT sends it.
const NDJSON: &str = "application/x-ndjson";

/// Lines a stream may have written that its connection has not sent yet. Past it, a client
/// that does not keep up loses events (and sees a gap in their sequence numbers) rather than
/// making the emulator buffer without bound, as a real server drops a slow consumer's lines.
const LINE_BUFFER: usize = 64;

/// Longest `ping_interval` accepted: a day, far beyond any useful heartbeat, and short enough
/// that deadlines computed from it never overflow.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The channels a stream listens to, subscribed before its token is checked so that a
/// revocation or [`close_streams`](super::Emulator::close_streams) right after the check is
/// not missed.
pub(super) struct Subscriptions {
    events: broadcast::Receiver<Arc<Event>>,
    revocations: watch::Receiver<u64>,
    closes: watch::Receiver<u64>,
}

impl Subscriptions {
    pub(super) fn new(shared: &Shared) -> Self {
        Self {
            events: shared.events.subscribe(),
            revocations: shared.revocations.subscribe(),
            closes: shared.closes.subscribe(),
        }
    }
}

/// The project of a stream path, `/v2/projects/{project}/devices:stream` (the `:` may come
/// percent-encoded), or `None` if `path` is not one.
pub(super) fn project_of(path: &str) -> Option<&str> {
    let (project, rest) = path.strip_prefix("/v2/projects/")?.split_once('/')?;
    let is_stream = rest == "devices:stream" || rest.eq_ignore_ascii_case("devices%3Astream");
    (is_stream && !project.is_empty()).then_some(project)
}

/// Answers a stream request whose token checked out: 400 for a bad `ping_interval`, else 200
/// with a body fed by a new stream task.
pub(super) fn open(
    shared: &Arc<Shared>,
    project: &str,
    query: Option<&str>,
    bearer: Bearer,
    subscriptions: Subscriptions,
    hangup: Hangup,
) -> Response<Body> {
    let ping = match ping_interval(query) {
        Ok(ping) => ping,
        Err(message) => return dt_error(StatusCode::BAD_REQUEST, message),
    };
    let (lines, body) = mpsc::channel(LINE_BUFFER);
    shared.record(|s| s.streams_opened += 1);
    tracing::debug!(project, ?ping, "emulator: event stream opened");
    let task = StreamTask {
        shared: Arc::clone(shared),
        project: project.to_owned(),
        ping,
        bearer,
        subscriptions,
        lines,
        hangup,
    };
    tokio::spawn(task.run());
    let mut response = Response::new(Body::Lines(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// The `ping_interval` query parameter: absent is no pings; else DT's `10s`, or `500ms`,
/// `1.5s`, `2m`, more than zero and at most [`MAX_PING_INTERVAL`].
fn ping_interval(query: Option<&str>) -> Result<Option<Duration>, &'static str> {
    let Some(query) = query else {
        return Ok(None);
    };
    let form = parse_form(query.as_bytes()).map_err(|_| "the query string is malformed")?;
    let Some(value) = form.get("ping_interval") else {
        return Ok(None);
    };
    parse_duration(value)
        .filter(|d| !d.is_zero() && *d <= MAX_PING_INTERVAL)
        .map(Some)
        .ok_or("ping_interval must be a duration such as 10s or 500ms, above zero and at most 24h")
}

fn parse_duration(value: &str) -> Option<Duration> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(ms) = value.strip_suffix("ms") {
        return digits(ms)
            .then(|| ms.parse().ok().map(Duration::from_millis))
            .flatten();
    }
    if let Some(m) = value.strip_suffix('m') {
        return digits(m)
            .then(|| {
                m.parse::<u64>()
                    .ok()?
                    .checked_mul(60)
                    .map(Duration::from_secs)
            })
            .flatten();
    }
    let secs = value.strip_suffix('s')?;
    let (whole, fraction) = secs.split_once('.').unwrap_or((secs, "0"));
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    Duration::try_from_secs_f64(secs.parse().ok()?).ok()
}

/// Why a stream's token stopped being good.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Expired,
    Revoked,
}

/// One open stream: writes events and pings to its body until the token expires or is
/// revoked, the client goes away or the emulator closes the streams.
struct StreamTask {
    shared: Arc<Shared>,
    project: String,
    ping: Option<Duration>,
    bearer: Bearer,
    subscriptions: Subscriptions,
    lines: mpsc::Sender<Bytes>,
    hangup: Hangup,
}

/// What woke a stream task.
enum Wake {
    /// The body was dropped: the client went away, or the emulator stopped.
    ClientGone,
    /// [`close_streams`](super::Emulator::close_streams).
    Close,
    /// Some token was revoked, perhaps this stream's.
    Revocation,
    /// The token's TTL ran out.
    Expired,
    /// The ticker sent an event, or this stream missed some.
    Event(Result<Arc<Event>, broadcast::error::RecvError>),
    /// Time for a heartbeat.
    Ping,
}

impl StreamTask {
    async fn run(mut self) {
        let mut expiry = pin!(events::sleep_until(self.bearer.expires_at));
        let mut next_ping = self.ping.and_then(|p| Instant::now().checked_add(p));
        let ending = loop {
            let wake = {
                let Subscriptions {
                    events,
                    revocations,
                    closes,
                } = &mut self.subscriptions;
                let mut client_gone = pin!(self.lines.closed());
                let mut close = pin!(closes.changed());
                let mut revocation = pin!(revocations.changed());
                let mut event = pin!(events.recv());
                let mut ping = pin!(events::sleep_until(next_ping));
                // In order of precedence: the connection's fate, then the token's, then lines.
                poll_fn(|cx| {
                    if client_gone.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Wake::ClientGone)
                    } else if close.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Wake::Close)
                    } else if revocation.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Wake::Revocation)
                    } else if expiry.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Wake::Expired)
                    } else if let Poll::Ready(received) = event.as_mut().poll(cx) {
                        Poll::Ready(Wake::Event(received))
                    } else {
                        ping.as_mut().poll(cx).map(|()| Wake::Ping)
                    }
                })
                .await
            };
            match wake {
                Wake::ClientGone => {
                    tracing::debug!("emulator: event stream closed by the client");
                    return;
                }
                Wake::Close => {
                    tracing::debug!("emulator: event stream connection dropped");
                    self.hang_up().await;
                    return;
                }
                Wake::Revocation => {
                    if self.shared.is_revoked(&self.bearer.token) {
                        break Ending::Revoked;
                    }
                }
                Wake::Expired => break Ending::Expired,
                Wake::Event(Ok(event)) => {
                    if !self.send(event.line(&self.project), true) {
                        return;
                    }
                }
                Wake::Event(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::debug!(missed, "emulator: event stream fell behind");
                }
                Wake::Event(Err(broadcast::error::RecvError::Closed)) => return,
                Wake::Ping => {
                    next_ping = self.ping.and_then(|p| Instant::now().checked_add(p));
                    if !self.send(events::ping_line(), false) {
                        return;
                    }
                }
            }
        };
        self.end(ending).await;
    }

    /// Hands a line to the body without waiting; `false` once the client has gone away. A
    /// full buffer drops the line.
    fn send(&self, line: Bytes, is_event: bool) -> bool {
        match self.lines.try_send(line) {
            Ok(()) => {
                if is_event {
                    self.shared.record(|s| s.events_sent += 1);
                }
                true
            }
            Err(TrySendError::Full(_)) => {
                tracing::debug!("emulator: event stream buffer full, line dropped");
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Drops the connection mid-body. Returns once the body is gone: dropping `lines`
    /// before that would end the body cleanly instead.
    async fn hang_up(&self) {
        self.hangup.hang_up();
        self.lines.closed().await;
    }

    async fn end(mut self, ending: Ending) {
        let end = self.shared.lock().stream_end;
        tracing::debug!(
            ?ending,
            ?end,
            "emulator: event stream token no longer valid"
        );
        let code = match end {
            StreamEnd::Error { code } => code,
            // `Close`, and whatever later variants mean.
            _ => {
                self.hang_up().await;
                return;
            }
        };
        let message = match ending {
            Ending::Expired => "the access token has expired",
            Ending::Revoked => "the access token has been revoked",
        };
        let line = events::error_line(code, StreamEnd::status_name(code), message);
        // An error from `send` means the client has gone away.
        let closes = &mut self.subscriptions.closes;
        if let First::Left(_) = first(closes.changed(), self.lines.send(line)).await {
            self.hang_up().await;
        }
        // Dropping `lines` ends the body cleanly.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths() {
        assert_eq!(project_of("/v2/projects/p1/devices:stream"), Some("p1"));
        assert_eq!(project_of("/v2/projects/p1/devices%3astream"), Some("p1"));
        assert_eq!(project_of("/v2/projects//devices:stream"), None);
        assert_eq!(project_of("/v2/projects/p1/devices"), None);
        assert_eq!(project_of("/v2/projects/a/b/devices:stream"), None);
        assert_eq!(project_of("/v2/projects"), None);
    }

    #[test]
    fn ping_intervals() {
        let ok = |q: &str| ping_interval(Some(q)).unwrap();
        assert_eq!(ok("ping_interval=10s"), Some(Duration::from_secs(10)));
        assert_eq!(ok("ping_interval=500ms"), Some(Duration::from_millis(500)));
        assert_eq!(ok("ping_interval=1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(ok("ping_interval=2m"), Some(Duration::from_secs(120)));
        assert_eq!(ok("eventTypes=temperature"), None);
        assert_eq!(ping_interval(None).unwrap(), None);
        for bad in [
            "ping_interval=",
            "ping_interval=10",
            "ping_interval=0s",
            "ping_interval=0ms",
            "ping_interval=-1s",
            "ping_interval=+1s",
            "ping_interval=1.s",
            "ping_interval=abc",
            "ping_interval=25h",
            "ping_interval=90000s",
            "ping_interval=99999999999999999999999ms",
            "ping_interval=1s&ping_interval=2s",
            "ping_interval=%zz",
        ] {
            assert!(ping_interval(Some(bad)).is_err(), "{bad}");
        }
    }
}
