//! A tonic client behind `AuthLayer`, offline: it calls a small gRPC service running in this
//! process (the emulator's `emulator.Echo`, which checks bearer tokens against the tokens
//! its identity service issued), then revokes every token and calls again — the layer sees
//! `UNAUTHENTICATED`, fetches a fresh token and resends the call, and the caller notices
//! nothing.
//!
//! ```text
//! cargo run --example grpc_client
//! ```
//!
//! No `protoc` is needed: the messages are raw bytes (the emulator's `BytesCodec`). With a
//! generated client, the one line that matters is the same: wrap the `Channel` in
//! `AuthLayer` and hand the result to `MyServiceClient::new`.

use std::process::ExitCode;

use token_refresh::{AuthLayer, JwtBearer, TokenProvider};
use token_refresh_emulator::Emulator;
use token_refresh_emulator::grpc::EchoClient;
use tonic::transport::Endpoint;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("grpc_client: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: grpc_client\n\nCalls the built-in emulator's gRPC echo service through AuthLayer."
        );
        return Ok(());
    }
    let emulator = Emulator::start().await?;
    println!("gRPC service and identity service at {}", emulator.origin());
    let provider = TokenProvider::new(JwtBearer::new(emulator.account()));

    let channel = Endpoint::from_shared(emulator.origin())?.connect().await?;
    // The whole integration: no body conversion, no interceptor.
    let channel = ServiceBuilder::new()
        .layer(AuthLayer::new(provider.clone()))
        .service(channel);
    let mut client = EchoClient::new(channel);

    let answer = client.unary("hello").await?;
    println!("echo: {}", String::from_utf8_lossy(&answer));

    emulator.revoke_all();
    println!("revoked every token; calling again");
    let answer = client.unary("hello again").await?;
    println!("echo: {}", String::from_utf8_lossy(&answer));

    let stats = emulator.stats();
    println!(
        "token requests: {}, gRPC calls: {}, of which refused as UNAUTHENTICATED: {}",
        stats.token_requests, stats.grpc_calls, stats.grpc_unauthenticated
    );
    if stats.token_requests != 2 || stats.grpc_unauthenticated != 1 {
        return Err("the revoked token was not replaced transparently".into());
    }
    Ok(())
}
