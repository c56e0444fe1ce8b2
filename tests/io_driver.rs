//! A Tokio runtime without the I/O driver: a network grant's refresh fails with a typed error
//! that says to enable I/O, sends nothing, and prints no panic.
//!
//! One test in its own binary, because it owns the process's panic hook.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use httpmock::prelude::*;
use token_refresh::{ClientCredentials, Error, TokenProvider};

#[test]
fn a_runtime_without_io_gets_a_clear_error_sends_nothing_and_prints_no_panic() {
    // Counts what reaches the application's panic hook; the crate's probes must not.
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&panics);
    std::panic::set_hook(Box::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));

    let server = MockServer::start();
    let endpoint = server.mock(|when, then| {
        when.method(POST).path("/oauth2/token");
        then.status(200).body(token_json("tok", 3600).to_string());
    });
    let time_only = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let jwt = TokenProvider::new(source(&server));
    let credentials = TokenProvider::new(ClientCredentials::new(
        server.url("/oauth2/token"),
        "client",
        "secret",
    ));
    for provider in [jwt, credentials] {
        let error = time_only.block_on(provider.token()).unwrap_err();
        assert!(matches!(error, Error::IoDisabled), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("enable_io()"), "{message}");
        assert!(
            !error.is_transient(),
            "a configuration error is not retried"
        );
        assert_eq!(
            provider.health().token_requests,
            1,
            "tried once, not retried"
        );
    }
    assert_eq!(endpoint.calls(), 0);

    // Without any driver the timer is missing first, and says so.
    let bare = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let provider = TokenProvider::new(source(&server));
    let error = bare.block_on(provider.token()).unwrap_err();
    assert!(matches!(error, Error::TimeDisabled), "{error:?}");

    // With both drivers the same provider works: the probe does not misfire.
    let full = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = full.block_on(provider.token()).unwrap();
    assert_eq!(token.expose_secret(), "tok");
    assert_eq!(endpoint.calls(), 1);

    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a probe's panic reached the panic hook, which would print it"
    );
    // The application's own panics still reach its hook: the crate's hook hands them on.
    let _ = std::panic::catch_unwind(|| panic!("the application's own panic"));
    assert_eq!(panics.load(Ordering::SeqCst), 1);
}
