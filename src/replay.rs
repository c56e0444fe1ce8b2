//! Request bodies that can be sent again after a rejection: a cheap copy where the body type
//! allows one, else a recording made *as the inner service reads the body*, up to a cap.
//!
//! The recording follows linkerd2-proxy's retry `ReplayBody`: nothing is buffered before
//! sending (a bidirectional gRPC stream flows as it would without it), every chunk read is
//! kept (a `Bytes` reference, no copy) until the cap is passed, and a replay sends what was
//! recorded and then goes on reading whatever the first send had not read yet.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};

/// A request body that [`AuthService`](crate::AuthService) can resend after a rejection.
///
/// [`into_replay`](Self::into_replay) is called once per request that carries a token, before
/// it is sent. It returns the body to send and a [`Replay`]: what is needed to send the body
/// again, if it can be. Implemented for:
///
/// | body | replayed after a rejection |
/// |---|---|
/// | `()`, [`Bytes`], `Full<Bytes>`, `Empty<_>`, `&'static str`, `&'static [u8]` | always: a copy is a reference-count increment |
/// | `String`, `Vec<u8>` | up to the limit (a copy of at most the limit); larger ones never, and never copied |
/// | `BoxBody<Bytes, E>`, `UnsyncBoxBody<Bytes, E>`, `tonic::body::Body` (feature `tonic`) | if the first send read at most the limit, recorded as it was read; empty ones always |
/// | `hyper::body::Incoming` | never (its 401 comes back as it is) |
///
/// Make your own body type replayable by implementing it: with a cheap copy
/// ([`Replay::from_copy`]), or by recording ([`Replay::record`]) if your type can hold a
/// [`RecordingBody`] of itself, as boxed bodies do.
///
/// ```
/// use bytes::Bytes;
/// use token_refresh::{Replay, ReplayBody};
///
/// /// A body that shares its bytes: copies are cheap.
/// #[derive(Clone)]
/// struct Shared(Bytes);
///
/// impl ReplayBody for Shared {
///     fn into_replay(self, _limit: usize) -> (Self, Replay<Self>) {
///         let copy = self.clone();
///         (self, Replay::from_copy(copy))
///     }
/// }
/// ```
pub trait ReplayBody: Sized {
    /// The body to send now, and how to send it again. `limit` is the most bytes a replay
    /// may keep in memory ([`AuthLayer::replay_limit`](crate::AuthLayer::replay_limit)).
    fn into_replay(self, limit: usize) -> (Self, Replay<Self>);
}

/// What it takes to send a request body again; from [`ReplayBody::into_replay`].
pub struct Replay<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    None,
    Copy(B),
    Recorded {
        shared: Arc<Shared<B>>,
        wrap: fn(RecordingBody<B>) -> B,
    },
}

impl<B> Replay<B> {
    /// The body cannot be sent again: a rejection is returned as it is.
    pub fn none() -> Self {
        Self { kind: Kind::None }
    }

    /// Sends `copy` the second time. For bodies whose copies are cheap (shared bytes) or
    /// small; the copy is made before the first send, so it should not cost much.
    pub fn from_copy(copy: B) -> Self {
        Self {
            kind: Kind::Copy(copy),
        }
    }

    /// Records `body` as it is read, up to `limit` bytes, and returns the body to send now
    /// with the replay. `wrap` turns a [`RecordingBody`] into a `B` (for a boxed body:
    /// boxing it). A body whose size hint is already over `limit` is sent as it is, not
    /// recorded.
    pub fn record(body: B, limit: usize, wrap: fn(RecordingBody<B>) -> B) -> (B, Self)
    where
        B: Body + Unpin,
        B::Data: Buf,
    {
        if body.size_hint().lower() > limit as u64 {
            return (body, Self::none());
        }
        let shared = Arc::new(Shared {
            limit,
            size_hint: body.size_hint(),
            recorded: Mutex::default(),
            parked: Mutex::new(None),
            settled: tokio::sync::Notify::new(),
        });
        let first = RecordingBody {
            inner: Some(body),
            shared: Arc::clone(&shared),
            replay: None,
            original: true,
        };
        (
            wrap(first),
            Self {
                kind: Kind::Recorded { shared, wrap },
            },
        )
    }

    /// Whether the body may be replayable at all (worth keeping the request's parts for).
    pub(crate) fn is_possible(&self) -> bool {
        !matches!(self.kind, Kind::None)
    }

    /// Waits, at most `max`, until the first send has read the whole body, passed the limit,
    /// or handed the body back: a rejection can arrive a moment before the connection lets
    /// go of a body it was still sending. Holds no borrow of `self` while it waits.
    pub(crate) fn settled(&self, max: Duration) -> impl Future<Output = ()> + Send + 'static
    where
        B: Send + 'static,
    {
        let shared = match &self.kind {
            Kind::Recorded { shared, .. } => Some(Arc::clone(shared)),
            _ => None,
        };
        async move {
            let Some(shared) = shared else { return };
            let wait = async {
                loop {
                    let notified = shared.settled.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    if shared.is_settled() {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(max, wait).await;
        }
    }

    /// Whether [`into_body`](Self::into_body) would give a body: a copy, or a recording that
    /// stayed within its limit and is either complete or handed back by the first send.
    pub(crate) fn can_replay(&self) -> bool {
        match &self.kind {
            Kind::None => false,
            Kind::Copy(_) => true,
            Kind::Recorded { shared, .. } => {
                let recorded = shared.recorded();
                !recorded.failed && (recorded.complete || lock(&shared.parked).is_some())
            }
        }
    }

    /// The body to send again, if it can be.
    pub(crate) fn into_body(self) -> Option<B> {
        match self.kind {
            Kind::None => None,
            Kind::Copy(body) => Some(body),
            Kind::Recorded { shared, wrap } => {
                let recorded = shared.recorded();
                if recorded.failed {
                    return None;
                }
                let chunks: VecDeque<Bytes> = recorded.chunks.iter().cloned().collect();
                let (inner, trailers) = if recorded.complete {
                    (None, recorded.trailers.clone())
                } else {
                    // The rest of the body, left where the first send stopped reading it.
                    (Some(lock(&shared.parked).take()?), None)
                };
                drop(recorded);
                Some(wrap(RecordingBody {
                    inner,
                    shared,
                    replay: Some(Replaying { chunks, trailers }),
                    original: false,
                }))
            }
        }
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::None => "none",
            Kind::Copy(_) => "copy",
            Kind::Recorded { .. } => "recorded",
        };
        f.debug_struct("Replay").field("kind", &kind).finish()
    }
}

/// A body that records what is read of the body it wraps, or replays such a recording; made
/// by [`Replay::record`]. Its data is [`Bytes`] and its error the wrapped body's.
pub struct RecordingBody<B> {
    /// The wrapped body, read by the first send or, after it, by the replay.
    inner: Option<B>,
    shared: Arc<Shared<B>>,
    /// A replay's recorded frames still to send.
    replay: Option<Replaying>,
    /// The first send records; a replay does not.
    original: bool,
}

struct Replaying {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

struct Shared<B> {
    limit: usize,
    size_hint: SizeHint,
    recorded: Mutex<Recorded>,
    /// The wrapped body, handed back by a first send that was dropped before reading it all.
    parked: Mutex<Option<B>>,
    /// Woken when the recording is complete or failed, or the body is handed back.
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Recorded {
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The whole body was read and recorded.
    complete: bool,
    /// The body passed the limit or failed: it cannot be replayed.
    failed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Shared<B> {
    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        lock(&self.recorded)
    }

    fn is_settled(&self) -> bool {
        let recorded = self.recorded();
        recorded.complete || recorded.failed || lock(&self.parked).is_some()
    }

    /// Marks the recording complete (`true`) or failed (`false`), and wakes a waiter.
    fn settle(&self, complete: bool) {
        let mut recorded = self.recorded();
        if complete {
            recorded.complete = true;
        } else {
            recorded.failed = true;
            recorded.chunks = Vec::new();
        }
        drop(recorded);
        self.settled.notify_waiters();
    }

    fn record(&self, chunk: &Bytes) {
        let mut recorded = self.recorded();
        if recorded.failed {
            return;
        }
        if recorded.len + chunk.len() > self.limit {
            drop(recorded);
            self.settle(false);
            return;
        }
        recorded.len += chunk.len();
        recorded.chunks.push(chunk.clone());
    }
}

impl<B> Body for RecordingBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(replay) = &mut this.replay {
            if let Some(chunk) = replay.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.inner.is_none() {
                return Poll::Ready(replay.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        let record = this.original;
        let shared = &this.shared;
        let frame = match frame {
            None => {
                if record {
                    shared.settle(true);
                }
                this.inner = None;
                return Poll::Ready(None);
            }
            Some(Err(error)) => {
                if record {
                    shared.settle(false);
                }
                return Poll::Ready(Some(Err(error)));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                if record {
                    shared.record(&chunk);
                    if inner.is_end_stream() {
                        shared.settle(true);
                    }
                }
                Frame::data(chunk)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    if record {
                        shared.recorded().trailers = Some(trailers.clone());
                        shared.settle(true);
                    }
                    Frame::trailers(trailers)
                }
                Err(_) => {
                    // A frame kind this crate does not know cannot be recorded faithfully.
                    if record {
                        shared.settle(false);
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let replayed = self
            .replay
            .as_ref()
            .is_none_or(|r| r.chunks.is_empty() && r.trailers.is_none());
        replayed && self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let pending: u64 = self
            .replay
            .as_ref()
            .map_or(0, |r| r.chunks.iter().map(|c| c.len() as u64).sum());
        match (&self.inner, self.original) {
            (Some(inner), true) => inner.size_hint(),
            (None, true) => SizeHint::with_exact(0),
            // A replay is as long as the original was.
            (_, false) if self.shared.size_hint.exact().is_some() => self.shared.size_hint,
            (Some(inner), false) => {
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + pending);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + pending);
                }
                hint
            }
            (None, false) => SizeHint::with_exact(pending),
        }
    }
}

impl<B> Drop for RecordingBody<B> {
    fn drop(&mut self) {
        // The first send is done with the body before reading it all: leave the rest for a
        // replay to go on with.
        if self.original
            && let Some(inner) = self.inner.take()
        {
            *lock(&self.shared.parked) = Some(inner);
            self.shared.settled.notify_waiters();
        }
    }
}

impl<B> fmt::Debug for RecordingBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingBody")
            .field("original", &self.original)
            .finish_non_exhaustive()
    }
}

macro_rules! replay_by_copy {
    ($($ty:ty),*) => {$(
        impl ReplayBody for $ty {
            fn into_replay(self, _limit: usize) -> (Self, Replay<Self>) {
                let copy = self.clone();
                (self, Replay::from_copy(copy))
            }
        }
    )*};
}

replay_by_copy!((), Bytes, Full<Bytes>, &'static str, &'static [u8]);

macro_rules! replay_up_to_the_limit {
    ($($ty:ty),*) => {$(
        impl ReplayBody for $ty {
            fn into_replay(self, limit: usize) -> (Self, Replay<Self>) {
                if self.len() > limit {
                    return (self, Replay::none());
                }
                let copy = self.clone();
                (self, Replay::from_copy(copy))
            }
        }
    )*};
}

replay_up_to_the_limit!(String, Vec<u8>);

impl<D> ReplayBody for Empty<D> {
    fn into_replay(self, _limit: usize) -> (Self, Replay<Self>) {
        (self, Replay::from_copy(Empty::new()))
    }
}

impl<E: 'static> ReplayBody for BoxBody<Bytes, E> {
    fn into_replay(self, limit: usize) -> (Self, Replay<Self>) {
        if self.is_end_stream() {
            let empty = Empty::new().map_err(|never| match never {}).boxed();
            return (self, Replay::from_copy(empty));
        }
        Replay::record(self, limit, |recording| recording.boxed())
    }
}

impl<E: 'static> ReplayBody for UnsyncBoxBody<Bytes, E> {
    fn into_replay(self, limit: usize) -> (Self, Replay<Self>) {
        if self.is_end_stream() {
            let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
            return (self, Replay::from_copy(empty));
        }
        Replay::record(self, limit, |recording| recording.boxed_unsync())
    }
}

/// An incoming body (a proxy forwarding requests) cannot be rebuilt: never replayed.
impl ReplayBody for hyper::body::Incoming {
    fn into_replay(self, _limit: usize) -> (Self, Replay<Self>) {
        (self, Replay::none())
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl ReplayBody for tonic::body::Body {
    fn into_replay(self, limit: usize) -> (Self, Replay<Self>) {
        if self.is_end_stream() {
            return (self, Replay::from_copy(tonic::body::Body::empty()));
        }
        Replay::record(self, limit, tonic::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type Boxed = UnsyncBoxBody<Bytes, std::convert::Infallible>;

    fn stream(chunks: &[&'static str]) -> Boxed {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
    }

    async fn read(body: Boxed) -> String {
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_fully_read_body_is_replayed_byte_for_byte() {
        let (first, replay) = stream(&["ab", "cd"]).into_replay(16);
        assert_eq!(read(first).await, "abcd");
        assert!(replay.can_replay());
        assert_eq!(read(replay.into_body().unwrap()).await, "abcd");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayed() {
        let (first, replay) = stream(&["abc", "def"]).into_replay(5);
        assert_eq!(read(first).await, "abcdef");
        assert!(!replay.can_replay());
        assert!(replay.into_body().is_none());
    }

    #[tokio::test]
    async fn a_replay_goes_on_where_the_first_send_stopped() {
        let (mut first, replay) = stream(&["ab", "cd", "ef"]).into_replay(16);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert!(!replay.can_replay(), "the first send still holds the body");
        drop(first);
        assert!(replay.can_replay());
        assert_eq!(read(replay.into_body().unwrap()).await, "abcdef");
    }

    #[tokio::test]
    async fn an_unread_body_is_replayed_whole_and_once() {
        let (first, replay) = stream(&["ab", "cd"]).into_replay(16);
        drop(first);
        assert_eq!(read(replay.into_body().unwrap()).await, "abcd");
    }
}
