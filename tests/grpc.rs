//! `AuthLayer` over a real tonic 0.14 `Channel`, calling a real gRPC server on loopback (the
//! emulator's `emulator.Echo`, which checks bearer tokens against the tokens its identity
//! service issued).
#![cfg(feature = "tonic")]

use std::time::Duration;

use bytes::Bytes;
use token_refresh::{AuthLayer, AuthService, JwtBearer, TokenProvider};
use token_refresh_emulator::grpc::EchoClient;
use token_refresh_emulator::{Emulator, Stats};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;

struct Setup {
    emulator: Emulator,
    provider: TokenProvider,
    client: EchoClient<AuthService<Channel>>,
}

/// An emulator, a provider for its account, and an echo client whose channel goes through
/// `AuthLayer` (built by `layer`).
async fn setup(layer: impl FnOnce(TokenProvider) -> AuthLayer) -> Setup {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(JwtBearer::new(emulator.account()));
    let channel = Endpoint::from_shared(emulator.origin())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The one line a tonic user writes: no body conversion, no map_request.
    let channel = ServiceBuilder::new()
        .layer(layer(provider.clone()))
        .service(channel);
    Setup {
        client: EchoClient::new(channel),
        emulator,
        provider,
    }
}

fn counts(stats: &Stats) -> (u64, u64) {
    (stats.token_requests, stats.grpc_calls)
}

#[tokio::test]
async fn a_channel_behind_auth_layer_sends_the_bearer_token() {
    let mut s = setup(AuthLayer::new).await;
    let answer = s.client.unary(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(answer, "hello");
    let stats = s.emulator.stats();
    assert_eq!(counts(&stats), (1, 1));
    assert_eq!(
        stats.grpc_unauthenticated, 0,
        "the server saw a valid bearer token"
    );
}

#[tokio::test]
async fn unauthenticated_is_refreshed_and_resent_once() {
    let mut s = setup(AuthLayer::new).await;
    s.client.unary(Bytes::from_static(b"warm")).await.unwrap();
    let before = s.provider.token().await.unwrap();
    s.emulator.revoke_all();
    let answer = s.client.unary(Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(answer, "again");
    let stats = s.emulator.stats();
    // One more token request; two more sends: the rejected one and the resend.
    assert_eq!(counts(&stats), (2, 3));
    assert_eq!(stats.grpc_unauthenticated, 1);
    let after = s.provider.token().await.unwrap();
    assert_ne!(
        before.expose_secret(),
        after.expose_secret(),
        "the resend carried a new token"
    );
}

#[tokio::test]
async fn permission_denied_refreshes_nothing() {
    let mut s = setup(AuthLayer::new).await;
    let status = s.client.forbidden().await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(counts(&s.emulator.stats()), (1, 1));
}

#[tokio::test]
async fn a_client_stream_under_the_limit_is_replayed() {
    let mut s = setup(AuthLayer::new).await;
    s.client.unary(Bytes::from_static(b"warm")).await.unwrap();
    s.emulator.revoke_all();
    let messages = [b"a", b"b", b"c"].map(|m| Bytes::from_static(m));
    let joined = s
        .client
        .client_stream(tokio_stream::iter(messages))
        .await
        .unwrap();
    assert_eq!(joined, "abc");
    assert_eq!(counts(&s.emulator.stats()), (2, 3));
}

#[tokio::test]
async fn a_client_stream_over_the_limit_gets_unauthenticated_back() {
    let mut s = setup(|p| AuthLayer::new(p).replay_limit(1024)).await;
    let revoked = s.provider.token().await.unwrap();
    s.emulator.revoke_all();
    let messages = (0..8).map(|_| Bytes::from(vec![b'x'; 512]));
    let status = s
        .client
        .client_stream(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(s.emulator.stats().grpc_calls, 1, "one send, no resend");
    // The rejected token was invalidated: the next token is a new one.
    let next = s.provider.token().await.unwrap();
    assert_ne!(next.expose_secret(), revoked.expose_secret());
    assert_eq!(s.emulator.stats().token_requests, 2);
}

#[tokio::test]
async fn a_bidirectional_stream_flows_without_deadlock() {
    let mut s = setup(AuthLayer::new).await;
    let (send, receive) = tokio::sync::mpsc::channel::<Bytes>(1);
    let requests = tokio_stream::wrappers::ReceiverStream::new(receive);
    let call = tokio::time::timeout(Duration::from_secs(10), async {
        let mut echoes = s.client.bidi_stream(requests).await.unwrap();
        // Each message is sent only after the previous echo came back: a layer that
        // buffered the request body before sending would wait forever here.
        for n in 0..5 {
            send.send(Bytes::from(format!("ping {n}"))).await.unwrap();
            let echo = echoes.message().await.unwrap().unwrap();
            assert_eq!(echo, format!("ping {n}"));
        }
        drop(send);
        assert!(echoes.message().await.unwrap().is_none());
    });
    call.await.expect("the stream deadlocked");
    assert_eq!(counts(&s.emulator.stats()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_rejections_of_one_token_refresh_once() {
    let s = setup(AuthLayer::new).await;
    let mut warm = s.client.clone();
    warm.unary(Bytes::from_static(b"warm")).await.unwrap();
    s.emulator.revoke_all();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..100 {
        let mut client = s.client.clone();
        calls.spawn(async move { client.unary(Bytes::from(format!("call {n}"))).await });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(
        s.emulator.stats().token_requests,
        2,
        "one extra token request"
    );
}
