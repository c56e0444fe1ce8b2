//! Does the crate interoperate with a real, certified authorization server? panva's
//! `oidc-provider` (npm, `tests/oidc-provider/`), with RFC 8707 resource indicators: every
//! claim is checked with the server's own answers — its JWT access tokens verified against
//! its JWKS for the resource's `aud`, its refusals, its userinfo endpoint, its request count.
//!
//! Needs Node and `npm ci --prefix tests/oidc-provider` (`scripts/test` does both); fails,
//! saying so, without them.

mod common;

use std::sync::Arc;

use common::oidc_provider::{OidcProvider, claims, test_key};
use token_refresh::{
    AccessToken, ClientAuth, ClientCredentials, Error, JwtBearer, OAuthClient, RefreshToken,
    TokenEndpoint, TokenExchange, TokenParams, TokenProvider, TokenSource,
};

const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn scope_of(claims: &serde_json::Value) -> &str {
    claims["scope"].as_str().unwrap_or_default()
}

/// Client credentials with `resource`, by each client authentication method: the server
/// issues a JWT whose `aud` is the resource asked for (and the scope asked for), and
/// another resource gets another audience.
#[tokio::test]
async fn client_credentials_with_a_resource_by_every_client_authentication() {
    let server = OidcProvider::start();
    let (a, b) = (server.resource_a(), server.resource_b());
    let basic = server.client("basic");
    let post = server.client("post");
    let secret_jwt = server.client("secret_jwt");
    let key = server.client("key");
    let url = server.token_endpoint.as_str();
    let sources = [
        (
            "client_secret_basic",
            ClientCredentials::new(url, &basic.id, &basic.secret).client_auth(ClientAuth::Basic),
            basic.id.clone(),
        ),
        (
            "client_secret_post",
            ClientCredentials::new(url, &post.id, &post.secret).client_auth(ClientAuth::Post),
            post.id.clone(),
        ),
        (
            "client_secret_jwt",
            ClientCredentials::with_client_auth(
                url,
                &secret_jwt.id,
                ClientAuth::client_secret_jwt(&secret_jwt.secret),
            ),
            secret_jwt.id.clone(),
        ),
        (
            "private_key_jwt RS256",
            ClientCredentials::with_client_auth(
                url,
                &key.id,
                ClientAuth::private_key_jwt(test_key("rsa-pkcs8.pem", "rsa-1")),
            ),
            key.id.clone(),
        ),
        (
            "private_key_jwt ES256",
            ClientCredentials::with_client_auth(
                url,
                &key.id,
                ClientAuth::private_key_jwt(test_key("ec-pkcs8.pem", "ec-1")),
            ),
            key.id.clone(),
        ),
    ];
    for (method, source, client_id) in sources {
        let source = source.scope("api:read");
        let token = source.clone().resource(a).fetch_token().await;
        let token = token.unwrap_or_else(|e| panic!("{method}: {e}"));
        let claims = server.verify(token.expose_secret(), a).await;
        assert_eq!(claims["client_id"], client_id.as_str(), "{method}");
        assert_eq!(scope_of(&claims), "api:read", "{method}");

        let token = source.resource(b).fetch_token().await.unwrap();
        let claims = server.verify(token.expose_secret(), b).await;
        assert_ne!(
            claims["aud"], a,
            "{method}: the resource decides the audience"
        );
    }
    assert_eq!(server.token_requests(Some("client_credentials")).await, 10);
}

/// The server refuses what it does not grant: a resource it does not know, and two
/// resources in one client-credentials request.
#[tokio::test]
async fn the_server_refuses_resources_it_does_not_grant() {
    let server = OidcProvider::start();
    let basic = server.client("basic");
    let source = ClientCredentials::new(&server.token_endpoint, &basic.id, &basic.secret);

    let error = source
        .clone()
        .resource("https://elsewhere.test/")
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_target"), "{error}");
    assert!(!error.is_transient());

    let error = source
        .resource(server.resource_a())
        .resource(server.resource_b())
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_target"), "{error}");
}

/// Refresh-token rotation with `resource` kept on every refresh: five refreshes in a row,
/// each token for the resource, each spending the refresh token the last one returned —
/// which the server's reuse detection checks: spending a spent one revokes the grant.
#[tokio::test]
async fn refresh_token_rotation_keeps_the_resource_on_every_refresh() {
    let server = OidcProvider::start();
    let client = server.client("refresh");
    let a = server.resource_a();
    let source = RefreshToken::new(
        server.token_endpoint.as_str(),
        OAuthClient::new(&client.id, &client.secret),
        &server.refresh_tokens[0],
    )
    .resource(a);

    let mut seen = Vec::new();
    for refresh in 1..=5 {
        let token = source
            .fetch_token()
            .await
            .unwrap_or_else(|e| panic!("refresh {refresh}: {e}"));
        let claims = server.verify(token.expose_secret(), a).await;
        assert_eq!(claims["sub"], "test-user");
        assert_eq!(scope_of(&claims), "api:read api:write");
        assert!(!seen.contains(&claims["jti"]), "a new token each time");
        seen.push(claims["jti"].clone());
    }
    assert_eq!(server.token_requests(Some("refresh_token")).await, 5);

    // The rotation was real: the first refresh token is spent, and spending it again is a
    // reuse, which revokes the whole grant (the series above with it).
    let replay = RefreshToken::new(
        server.token_endpoint.as_str(),
        OAuthClient::new(&client.id, &client.secret),
        &server.refresh_tokens[0],
    )
    .resource(a);
    let error = replay.fetch_token().await.unwrap_err();
    assert!(
        matches!(error, Error::ReauthorizationNeeded { .. }),
        "{error}"
    );
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(error, Error::ReauthorizationNeeded { .. }),
        "{error}"
    );
}

/// What the `resource` on a refresh changes, on three refresh tokens of the same kind: with
/// it, a JWT for the API (refused by the userinfo endpoint); without it, an opaque token for
/// the OpenID userinfo endpoint (accepted there), not for the API; and without it and without
/// `openid`, a refusal, since the grant names two resources.
#[tokio::test]
async fn a_refresh_that_drops_the_resource_gets_another_audience_or_a_refusal() {
    let server = OidcProvider::start();
    let client = server.client("refresh");
    let a = server.resource_a();
    let source = |refresh_token: &str| {
        RefreshToken::new(
            server.token_endpoint.as_str(),
            OAuthClient::new(&client.id, &client.secret),
            refresh_token,
        )
    };

    let with = source(&server.refresh_tokens[0]).resource(a);
    let token = with.fetch_token().await.unwrap();
    server.verify(token.expose_secret(), a).await;
    assert_eq!(server.userinfo_status(token.expose_secret()).await, 401);

    let without = source(&server.refresh_tokens[1]);
    let dropped = without.fetch_token().await.unwrap();
    assert!(
        claims(dropped.expose_secret()).is_none(),
        "without resource: an opaque token, not a JWT for the API"
    );
    assert_eq!(server.userinfo_status(dropped.expose_secret()).await, 200);

    let narrow = source(&server.refresh_tokens[2]).scope("api:read");
    let error = narrow.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_target"), "{error}");
}

/// RFC 8414 / OpenID discovery against the real server: its metadata as it publishes it,
/// a token through the discovered endpoint, and the mix-up defence.
#[tokio::test]
async fn discovery_against_the_real_server() {
    let server = OidcProvider::start();
    let endpoint = TokenEndpoint::discover(&server.issuer);
    let metadata = endpoint.metadata().await.unwrap();
    assert_eq!(metadata.issuer(), server.issuer);
    assert_eq!(metadata.token_endpoint(), server.token_endpoint);
    for method in [
        "client_secret_basic",
        "client_secret_post",
        "client_secret_jwt",
        "private_key_jwt",
    ] {
        assert!(
            metadata
                .token_endpoint_auth_methods()
                .iter()
                .any(|m| m == method),
            "{method} in {:?}",
            metadata.token_endpoint_auth_methods()
        );
    }
    assert_eq!(
        metadata.token_endpoint_auth_signing_algs(),
        ["HS256", "RS256", "PS256", "ES256"]
    );
    for grant in ["client_credentials", "refresh_token"] {
        assert!(metadata.grant_types().iter().any(|g| g == grant), "{grant}");
    }

    let basic = server.client("basic");
    let source = ClientCredentials::new(endpoint, &basic.id, &basic.secret)
        .scope("api:write")
        .resource(server.resource_b());
    let token = TokenProvider::new(source).token().await.unwrap();
    let claims = server
        .verify(token.expose_secret(), server.resource_b())
        .await;
    assert_eq!(scope_of(&claims), "api:write");

    // The document names `http://127.0.0.1:PORT`, not the issuer asked for.
    let other = TokenEndpoint::discover(format!("{}/", server.issuer));
    let error = other.metadata().await.unwrap_err();
    assert!(matches!(error, Error::IssuerMismatch { .. }), "{error}");
}

/// `fetch_token_for` with scopes and resources that replace the grant's own, and the store
/// keys that tell them apart, for one source: checked by the token it gets for each.
async fn check_params(server: &OidcProvider, source: &dyn TokenSource) {
    let (a, b) = (server.resource_a(), server.resource_b());
    // The grant's own: resource A, api:read.
    let own = source.fetch_token().await.unwrap();
    let claims = server.verify(own.expose_secret(), a).await;
    assert_eq!(scope_of(&claims), "api:read");

    // Params replace both.
    let params = TokenParams::resource(b).with_scope("api:write");
    let token = source.fetch_token_for(&params).await.unwrap();
    let claims = server.verify(token.expose_secret(), b).await;
    assert_eq!(scope_of(&claims), "api:write");

    // Only a scope: the grant's resource stays.
    let token = source
        .fetch_token_for(&TokenParams::scope("api:write api:read"))
        .await
        .unwrap();
    let claims = server.verify(token.expose_secret(), a).await;
    assert_eq!(scope_of(&claims), "api:read api:write");

    // Store keys: one per distinct params, equal for equal (normalised) ones.
    let key = |params: &TokenParams| source.store_key_for(params).expect("a store key");
    assert_eq!(key(&TokenParams::new()), source.store_key().unwrap());
    let keys = [
        key(&TokenParams::new()),
        key(&params),
        key(&TokenParams::resource(a).with_scope("api:write")),
        key(&TokenParams::resource(b)),
        key(&TokenParams::scope("api:write api:read")),
    ];
    for (i, one) in keys.iter().enumerate() {
        for other in &keys[i + 1..] {
            assert_ne!(one, other);
        }
    }
    assert_eq!(
        key(&TokenParams::scope("api:read api:write")),
        key(&TokenParams::scope("api:write api:read api:read"))
    );
}

#[tokio::test]
async fn fetch_token_for_client_credentials() {
    let server = OidcProvider::start();
    let basic = server.client("basic");
    let source = ClientCredentials::new(&server.token_endpoint, &basic.id, &basic.secret)
        .resource(server.resource_a())
        .scope("api:read");
    check_params(&server, &source).await;
    assert_eq!(server.token_requests(Some("client_credentials")).await, 3);
}

#[tokio::test]
async fn fetch_token_for_refresh_token() {
    let server = OidcProvider::start();
    let client = server.client("refresh");
    let source = RefreshToken::new(
        server.token_endpoint.as_str(),
        OAuthClient::new(&client.id, &client.secret),
        &server.refresh_tokens[0],
    )
    .resource(server.resource_a())
    .scope("api:read");
    // Three refreshes of one rotating series, each with its own params.
    check_params(&server, &source).await;
    assert_eq!(server.token_requests(Some("refresh_token")).await, 3);
}

#[tokio::test]
async fn fetch_token_for_jwt_bearer() {
    let server = OidcProvider::start();
    let client = server.client("jwt_bearer");
    let source = JwtBearer::signed_by(
        &server.token_endpoint,
        &client.id,
        test_key("rsa-pkcs8.pem", "rsa-1"),
    )
    .resource(server.resource_a())
    .scope("api:read");
    check_params(&server, &source).await;
    assert_eq!(
        server
            .token_requests(Some("urn:ietf:params:oauth:grant-type:jwt-bearer"))
            .await,
        3
    );
}

#[tokio::test]
async fn fetch_token_for_token_exchange() {
    let server = OidcProvider::start();
    let basic = server.client("basic");
    // The subject: an access token this server issued to the client (opaque: no resource).
    let subject = ClientCredentials::new(&server.token_endpoint, &basic.id, &basic.secret);
    let subject = Arc::new(subject);
    let source = TokenExchange::new(server.token_endpoint.as_str(), move || {
        let subject = Arc::clone(&subject);
        async move {
            let token: AccessToken = subject.fetch_token().await?;
            Ok(token.expose_secret().to_owned())
        }
    })
    .subject_token_type(ACCESS_TOKEN)
    .client(OAuthClient::new(&basic.id, &basic.secret))
    .resource(server.resource_a())
    .scope("api:read");
    check_params(&server, &source).await;
    assert_eq!(
        server
            .token_requests(Some("urn:ietf:params:oauth:grant-type:token-exchange"))
            .await,
        3
    );
}

/// The provider's single flight against the real server: 100 concurrent callers on a
/// multi-thread runtime, one token request, one token for the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_make_one_token_request() {
    const CALLERS: usize = 100;
    let server = OidcProvider::start();
    let basic = server.client("basic");
    let a = server.resource_a().to_owned();
    let provider = TokenProvider::new(
        ClientCredentials::new(&server.token_endpoint, &basic.id, &basic.secret)
            .resource(&a)
            .scope("api:read"),
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (provider, barrier) = (provider.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            provider.token().await.map(|t| t.expose_secret().to_owned())
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");
    server.verify(&tokens[0], &a).await;
    assert_eq!(server.token_requests(None).await, 1);
}
