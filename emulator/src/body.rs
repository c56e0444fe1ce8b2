//! The body of the emulator's responses: a whole one, or lines streamed from a channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use tokio::sync::mpsc;

/// A response body: [`Full`] for the ordinary routes, the lines a stream task sends (that
/// body ends cleanly, the chunked body's last chunk, once the task drops its sender), or a
/// gRPC answer.
#[derive(Debug)]
pub(super) enum Body {
    /// The whole body at once.
    Full(Full<Bytes>),
    /// Lines as they come.
    Lines(mpsc::Receiver<Bytes>),
    /// A gRPC response (feature `tonic`).
    #[cfg(feature = "tonic")]
    Grpc(tonic::body::Body),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::Full(Full::new(bytes))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Self::Lines(lines) => lines
                .poll_recv(cx)
                .map(|line| line.map(|l| Ok(Frame::data(l)))),
            #[cfg(feature = "tonic")]
            Self::Grpc(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(full) => full.is_end_stream(),
            Self::Lines(_) => false,
            #[cfg(feature = "tonic")]
            Self::Grpc(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(full) => full.size_hint(),
            Self::Lines(_) => SizeHint::default(),
            #[cfg(feature = "tonic")]
            Self::Grpc(body) => body.size_hint(),
        }
    }
}
