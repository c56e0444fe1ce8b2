//! With `HTTP_PROXY` set, a plain-http token request to a loopback host still goes straight
//! to it: the loopback exemption for plain http holds only if the assertion never leaves the
//! machine, and a proxy would see it in clear text (and could answer for the endpoint).
//!
//! Its own test binary: the proxy variables are process-wide.

mod common;

use common::*;
use token_refresh::{JwtBearer, TokenProvider};

#[tokio::test]
async fn a_loopback_token_request_bypasses_the_proxy() {
    let proxy = serve(|_| json_response(200, &token_json("from-the-proxy", 3600), &[])).await;
    let endpoint = serve(|_| json_response(200, &token_json("from-the-endpoint", 3600), &[])).await;
    // SAFETY: this binary has one test and no other thread reads the environment yet.
    for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        unsafe { std::env::set_var(name, proxy.url("")) };
    }
    for name in ["NO_PROXY", "no_proxy"] {
        unsafe { std::env::remove_var(name) };
    }
    let provider = TokenProvider::new(JwtBearer::new(account()).token_url(endpoint.url("/token")));
    let token = provider.token().await.unwrap();
    assert_eq!(token.expose_secret(), "from-the-endpoint");
    assert_eq!(proxy.requests(), 0, "the proxy saw the token request");
    assert_eq!(endpoint.requests(), 1);
}
