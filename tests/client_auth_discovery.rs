//! Does discovery pick the client authentication method when the user gave a secret or a key
//! and left the method open (issue 30, item 6)? Against panva's oidc-provider and against the
//! emulator, each narrowed to fewer methods or algorithms: the method chosen is the one the
//! server accepts, and a credential that fits none is refused before anything is sent, with
//! an error naming what the server lists.

mod common;

use common::oidc_provider::{OidcProvider, test_key};
use token_refresh::{
    ClientAuth, ClientCredentials, Error, OAuthClient, RefreshToken, SigningKey, TokenEndpoint,
    TokenSource,
};
use token_refresh_emulator::Emulator;

/// Asserts `error` is the refusal naming `credential` and what the server lists, with no
/// secret in its text.
fn assert_refused(error: &Error, credential: &str, lists: &[&str], secret: &str) {
    let Error::ClientAuthUnsupported {
        credential: offered,
        methods,
        ..
    } = error
    else {
        panic!("not a ClientAuthUnsupported refusal: {error:?}");
    };
    assert_eq!(offered, credential);
    let text = error.to_string();
    for listed in lists {
        assert!(text.contains(listed), "{listed:?} not named in: {text}");
    }
    assert!(!methods.is_empty());
    assert!(!error.is_transient());
    assert!(secret.is_empty() || !text.contains(secret), "{text}");
    assert!(!format!("{error:?}").contains(secret) || secret.is_empty());
}

// --- oidc-provider ------------------------------------------------------------------------

/// A key left open: `private_key_jwt`, which the server accepts, for RS256 and ES256 keys;
/// the same source at the plain token URL signs its assertion too.
#[tokio::test]
async fn a_key_gets_private_key_jwt_from_oidc_provider() {
    let server = OidcProvider::start();
    let client = server.client("key");
    for (file, kid) in [("rsa-pkcs8.pem", "rsa-1"), ("ec-pkcs8.pem", "ec-1")] {
        for endpoint in [
            TokenEndpoint::discover(&server.issuer),
            TokenEndpoint::new(&server.token_endpoint),
        ] {
            let source = ClientCredentials::with_key(endpoint, &client.id, test_key(file, kid))
                .resource(server.resource_a())
                .scope("api:read");
            let token = source
                .fetch_token()
                .await
                .unwrap_or_else(|e| panic!("{kid}: {e}"));
            let claims = server
                .verify(token.expose_secret(), server.resource_a())
                .await;
            assert_eq!(claims["client_id"], client.id.as_str());
        }
    }
    // An HMAC key: client_secret_jwt, for the client registered with it.
    let client = server.client("secret_jwt");
    let key = SigningKey::from_secret(&client.secret).unwrap();
    let source =
        ClientCredentials::with_key(TokenEndpoint::discover(&server.issuer), &client.id, key);
    source.fetch_token().await.unwrap();
    assert_eq!(server.token_requests_by("private_key_jwt").await, 4);
    assert_eq!(server.token_requests_by("client_secret_jwt").await, 1);
    assert_eq!(server.token_requests(None).await, 5);
}

/// An Ed25519 key, whose algorithm the server does not list: refused before anything is
/// sent, naming what it lists; and the server would indeed have refused it.
#[tokio::test]
async fn a_key_the_server_does_not_take_is_refused_before_sending() {
    let server = OidcProvider::start();
    let client = server.client("key");
    let key = test_key("ed25519.pem", "ed25519-1");
    let source = ClientCredentials::with_key(
        TokenEndpoint::discover(&server.issuer),
        &client.id,
        key.clone(),
    );
    let error = source.fetch_token().await.unwrap_err();
    assert_refused(
        &error,
        "EdDSA key (private_key_jwt)",
        &["RS256", "PS256", "ES256", "private_key_jwt", &server.issuer],
        "",
    );
    assert_eq!(server.token_requests(None).await, 0, "nothing was sent");

    // Chosen by hand, it is sent as given, and the server refuses it.
    let forced =
        ClientCredentials::with_key(TokenEndpoint::discover(&server.issuer), &client.id, key)
            .client_auth(ClientAuth::private_key_jwt(test_key(
                "ed25519.pem",
                "ed25519-1",
            )));
    let error = forced.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"), "{error}");
    assert_eq!(server.token_requests(None).await, 1);
}

/// A secret left open: `client_secret_basic` where the server lists it, and
/// `client_secret_post` where it lists only that; at a plain token URL, Basic as before.
/// (oidc-provider takes either from a client registered with one of them, so the methods
/// are counted as sent; the emulator, below, refuses the one it does not list.)
#[tokio::test]
async fn a_secret_gets_basic_unless_the_server_lists_only_post() {
    let server = OidcProvider::start();
    let basic = server.client("basic");
    ClientCredentials::new(
        TokenEndpoint::discover(&server.issuer),
        &basic.id,
        &basic.secret,
    )
    .fetch_token()
    .await
    .unwrap();
    assert_eq!(server.token_requests_by("client_secret_basic").await, 1);
    assert_eq!(server.token_requests(None).await, 1);

    let post_only =
        OidcProvider::start_with(&["--auth-methods", "client_secret_post,private_key_jwt"]);
    let post = post_only.client("post");
    let source = ClientCredentials::new(
        TokenEndpoint::discover(&post_only.issuer),
        &post.id,
        &post.secret,
    )
    .resource(post_only.resource_a())
    .scope("api:read");
    let token = source.fetch_token().await.unwrap();
    post_only
        .verify(token.expose_secret(), post_only.resource_a())
        .await;
    assert_eq!(post_only.token_requests_by("client_secret_post").await, 1);
    // Without discovery there is nothing to choose by: HTTP Basic, as before.
    ClientCredentials::new(post_only.token_endpoint.as_str(), &post.id, &post.secret)
        .fetch_token()
        .await
        .unwrap();
    assert_eq!(post_only.token_requests_by("client_secret_basic").await, 1);
    assert_eq!(post_only.token_requests(None).await, 2);
}

/// A secret at a server that takes keys only: refused before sending, naming the methods,
/// the secret nowhere in the error.
#[tokio::test]
async fn a_secret_the_server_does_not_take_is_refused_before_sending() {
    let server = OidcProvider::start_with(&["--auth-methods", "private_key_jwt"]);
    let basic = server.client("basic");
    let source = ClientCredentials::new(
        TokenEndpoint::discover(&server.issuer),
        &basic.id,
        &basic.secret,
    );
    let error = source.fetch_token().await.unwrap_err();
    assert_refused(
        &error,
        "a client secret",
        &["private_key_jwt", "OAuthClient::with_key"],
        &basic.secret,
    );
    assert_eq!(server.token_requests(None).await, 0);
}

/// The choice serves every grant that names a client: a refresh token spent by a client
/// whose secret is left open, with Basic at oidc-provider (which lists it) and in the form
/// at an emulator that lists only that.
#[tokio::test]
async fn a_refresh_token_client_gets_its_method_from_discovery() {
    let server = OidcProvider::start();
    let client = server.client("refresh");
    let source = RefreshToken::new(
        TokenEndpoint::discover(&server.issuer),
        OAuthClient::new(&client.id, &client.secret),
        &server.refresh_tokens[0],
    )
    .resource(server.resource_b());
    let token = source.fetch_token().await.unwrap();
    server
        .verify(token.expose_secret(), server.resource_b())
        .await;
    assert_eq!(server.token_requests_by("client_secret_basic").await, 1);

    let emulator = Emulator::start().await.unwrap();
    emulator.set_auth_methods(Some(&["client_secret_post"]));
    let source = RefreshToken::new(
        TokenEndpoint::discover(emulator.issuer()),
        OAuthClient::new(emulator.client_id(), emulator.client_secret()),
        emulator.issue_refresh_token(),
    );
    source.fetch_token().await.unwrap();
    source.fetch_token().await.unwrap();
    assert_eq!(emulator.stats().refresh_token_grants, 2);
}

// --- the emulator -------------------------------------------------------------------------

fn ed25519_key() -> SigningKey {
    test_key("ed25519.pem", "client-key-1")
}

/// The emulator lists every method and algorithm: a key left open signs `private_key_jwt`.
#[tokio::test]
async fn a_key_gets_private_key_jwt_from_the_emulator() {
    let emulator = Emulator::start().await.unwrap();
    let key = ed25519_key();
    emulator
        .register_key(emulator.client_id(), &key.public_jwk().unwrap())
        .unwrap();
    let source = ClientCredentials::with_key(
        TokenEndpoint::discover(emulator.issuer()),
        emulator.client_id(),
        key,
    );
    source.fetch_token().await.unwrap();
    let stats = emulator.stats();
    assert_eq!((stats.discovery_requests, stats.token_successes), (1, 1));
}

/// The emulator narrowed to `client_secret_post`: a secret left open is sent in the form and
/// accepted; at the plain token URL it goes with Basic, which the emulator now refuses.
#[tokio::test]
async fn a_secret_gets_post_from_an_emulator_that_lists_only_post() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_auth_methods(Some(&["client_secret_post"]));
    let discovered = ClientCredentials::new(
        TokenEndpoint::discover(emulator.issuer()),
        emulator.client_id(),
        emulator.client_secret(),
    );
    discovered.fetch_token().await.unwrap();

    let plain = ClientCredentials::new(
        emulator.token_url(),
        emulator.client_id(),
        emulator.client_secret(),
    );
    let error = plain.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"), "{error}");
    let stats = emulator.stats();
    assert_eq!((stats.token_successes, stats.token_failures), (1, 1));
}

/// The emulator narrowed to RS256 assertions: an ES256 key is refused before anything is
/// sent, and an RSA key is accepted; narrowed to keys only, a secret is refused.
#[tokio::test]
async fn the_emulator_narrowed_refuses_what_it_does_not_list() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_auth_signing_algs(Some(&["RS256"]));
    let ec = test_key("ec-pkcs8.pem", "ec-1");
    let rsa = test_key("rsa-pkcs8.pem", "rsa-1");
    for key in [&ec, &rsa] {
        emulator
            .register_key(emulator.client_id(), &key.public_jwk().unwrap())
            .unwrap();
    }
    let with_key = |key: &SigningKey| {
        ClientCredentials::with_key(
            TokenEndpoint::discover(emulator.issuer()),
            emulator.client_id(),
            key.clone(),
        )
    };
    let error = with_key(&ec).fetch_token().await.unwrap_err();
    assert_refused(&error, "ES256 key (private_key_jwt)", &["[RS256]"], "");
    assert_eq!(emulator.stats().token_requests, 0);
    with_key(&rsa).fetch_token().await.unwrap();
    assert_eq!(emulator.stats().token_successes, 1);

    emulator.set_auth_methods(Some(&["private_key_jwt"]));
    let secret = emulator.client_secret();
    let source = ClientCredentials::new(
        TokenEndpoint::discover(emulator.issuer()),
        emulator.client_id(),
        &secret,
    );
    let error = source.fetch_token().await.unwrap_err();
    assert_refused(&error, "a client secret", &["[private_key_jwt]"], &secret);
    assert_eq!(emulator.stats().token_requests, 1);
}
