//! A small gRPC service behind the emulator's bearer tokens (feature `tonic`): what
//! the gRPC example and tests call through `AuthLayer` over a tonic
//! `Channel`, with no `protoc` anywhere — messages are raw bytes ([`BytesCodec`]).
//!
//! Service `emulator.Echo`, on the emulator's own port (HTTP/2):
//!
//! | method | kind | answers |
//! |---|---|---|
//! | [`UNARY`] | unary | the message it got |
//! | [`CLIENT_STREAM`] | client streaming | every message it got, joined; it reads the whole stream *before* it checks the token, as a server that authenticates in its handler does |
//! | [`BIDI_STREAM`] | bidirectional | each message as it arrives |
//! | [`FORBIDDEN`] | unary | `PERMISSION_DENIED` (7) to a valid token |
//!
//! A call without a valid token (missing, unknown, expired or revoked) gets
//! `UNAUTHENTICATED` (16) in the response headers (a trailers-only response), the way
//! gRPC servers report a bad token. Calls are counted in [`Stats`](super::Stats).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{ClientStreamingService, StreamingService, UnaryService};
use tonic::{IntoStreamingRequest, Request, Response, Status, Streaming};

use super::Shared;

/// The service's name, as in `/emulator.Echo/Unary`.
pub const SERVICE: &str = "emulator.Echo";
/// Unary echo.
pub const UNARY: &str = "/emulator.Echo/Unary";
/// Client streaming: the messages joined.
pub const CLIENT_STREAM: &str = "/emulator.Echo/ClientStream";
/// Bidirectional streaming echo.
pub const BIDI_STREAM: &str = "/emulator.Echo/BidiStream";
/// Unary, always `PERMISSION_DENIED` for a valid token.
pub const FORBIDDEN: &str = "/emulator.Echo/Forbidden";

/// A tonic codec whose messages are raw bytes: no protobuf, no `protoc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

/// The encoder of [`BytesCodec`].
#[derive(Debug)]
pub struct BytesEncoder;

/// The decoder of [`BytesCodec`].
#[derive(Debug)]
pub struct BytesDecoder;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

/// A client of `emulator.Echo` over any tonic transport, e.g. an `AuthLayer` around a
/// `Channel` — what generated code would be, written by hand.
#[derive(Clone, Debug)]
pub struct EchoClient<T> {
    grpc: tonic::client::Grpc<T>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    /// A client over `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(inner),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::from_error(e.into()))
    }

    /// Calls [`UNARY`]: the answer is `message`.
    pub async fn unary(&mut self, message: impl Into<Bytes>) -> Result<Bytes, Status> {
        self.ready().await?;
        let request = Request::new(message.into());
        let path = PathAndQuery::from_static(UNARY);
        Ok(self
            .grpc
            .unary(request, path, BytesCodec)
            .await?
            .into_inner())
    }

    /// Calls [`FORBIDDEN`]: `PERMISSION_DENIED` with a valid token.
    pub async fn forbidden(&mut self) -> Result<Bytes, Status> {
        self.ready().await?;
        let request = Request::new(Bytes::new());
        let path = PathAndQuery::from_static(FORBIDDEN);
        Ok(self
            .grpc
            .unary(request, path, BytesCodec)
            .await?
            .into_inner())
    }

    /// Calls [`CLIENT_STREAM`] with a stream of messages: the answer is them joined.
    pub async fn client_stream(
        &mut self,
        messages: impl IntoStreamingRequest<Message = Bytes>,
    ) -> Result<Bytes, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(CLIENT_STREAM);
        let request = messages.into_streaming_request();
        Ok(self
            .grpc
            .client_streaming(request, path, BytesCodec)
            .await?
            .into_inner())
    }

    /// Calls [`BIDI_STREAM`]: each message comes back as it is sent.
    pub async fn bidi_stream(
        &mut self,
        messages: impl IntoStreamingRequest<Message = Bytes>,
    ) -> Result<Streaming<Bytes>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(BIDI_STREAM);
        let request = messages.into_streaming_request();
        Ok(self
            .grpc
            .streaming(request, path, BytesCodec)
            .await?
            .into_inner())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// Answers one gRPC call; `authorized` is the bearer check of the request's headers.
pub(super) async fn handle<B>(
    shared: &Arc<Shared>,
    request: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    shared.record(|s| s.grpc_calls += 1);
    let path = request.uri().path().to_owned();
    let authorized = shared
        .check_bearer(request.headers(), "POST", &path)
        .is_ok();
    let mut grpc = tonic::server::Grpc::new(BytesCodec);
    if path == CLIENT_STREAM {
        // Reads the stream first, then checks the token.
        let handler = Joiner {
            shared: Arc::clone(shared),
            authorized,
        };
        return grpc.client_streaming(handler, request).await;
    }
    if !authorized {
        shared.record(|s| s.grpc_unauthenticated += 1);
        return Status::unauthenticated("the access token is not valid").into_http();
    }
    match path.as_str() {
        UNARY => grpc.unary(Echo, request).await,
        FORBIDDEN => grpc.unary(Forbidden, request).await,
        BIDI_STREAM => grpc.streaming(Echo, request).await,
        _ => Status::unimplemented(format!("no method {path}")).into_http(),
    }
}

/// Echoes what it gets, unary or streaming.
struct Echo;

impl UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = BoxFuture<Bytes>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let message = request.into_inner();
        Box::pin(async move { Ok(Response::new(message)) })
    }
}

impl StreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = Streaming<Bytes>;
    type Future = BoxFuture<Streaming<Bytes>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        // The request stream is the response stream: each message goes back as it comes.
        let messages = request.into_inner();
        Box::pin(async move { Ok(Response::new(messages)) })
    }
}

/// Refuses every call with a valid token.
struct Forbidden;

impl UnaryService<Bytes> for Forbidden {
    type Response = Bytes;
    type Future = BoxFuture<Bytes>;

    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        Box::pin(async { Err(Status::permission_denied("this method is forbidden")) })
    }
}

/// Joins a client stream, then checks the token.
struct Joiner {
    shared: Arc<Shared>,
    authorized: bool,
}

impl ClientStreamingService<Bytes> for Joiner {
    type Response = Bytes;
    type Future = BoxFuture<Bytes>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let (shared, authorized) = (Arc::clone(&self.shared), self.authorized);
        Box::pin(async move {
            let mut messages = request.into_inner();
            let mut joined = Vec::new();
            while let Some(message) = messages.message().await? {
                joined.put(message);
            }
            if !authorized {
                shared.record(|s| s.grpc_unauthenticated += 1);
                return Err(Status::unauthenticated("the access token is not valid"));
            }
            Ok(Response::new(Bytes::from(joined)))
        })
    }
}
