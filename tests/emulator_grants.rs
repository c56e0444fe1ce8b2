//! Does the emulator's token endpoint implement the client-credentials grant (RFC 6749 §4.4)
//! with both client authentications of RFC 6749 §2.3.1, strictly, next to the JWT-bearer one?

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use token_refresh::{ClientAuth, ClientCredentials, Error, JwtBearer, TokenProvider};
use token_refresh_emulator::Emulator;

/// Bounds every provider call: a permanent error must not be retried for long.
const LIMIT: Duration = Duration::from_secs(5);

const GRANT: &str = "client_credentials";

async fn token_of(source: ClientCredentials) -> Result<String, Error> {
    let provider = TokenProvider::new(source);
    let token = tokio::time::timeout(LIMIT, provider.token())
        .await
        .expect("the provider answered in time")?;
    Ok(token.expose_secret().to_owned())
}

async fn get_projects(emu: &Emulator, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}/projects", emu.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("API request")
        .status()
}

/// A token request sent by hand: the form, and HTTP Basic credentials used as given.
async fn post_token(
    emu: &Emulator,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("token request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = serde_json::from_str(&response.text().await.unwrap()).expect("a JSON body");
    (status, headers, body)
}

#[tokio::test]
async fn basic_and_post_both_yield_tokens_that_work_on_the_api() {
    let emu = Emulator::start().await.unwrap();
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let token = token_of(emu.client_credentials().client_auth(auth.clone()))
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(get_projects(&emu, &token).await, 200, "{auth:?}");
    }
    assert_eq!(get_projects(&emu, "not-a-token").await, 401);
    let stats = emu.stats();
    assert_eq!((stats.token_requests, stats.token_successes), (2, 2));
    assert_eq!(stats.api_unauthorized, 1);
}

#[tokio::test]
async fn the_default_source_authenticates_with_basic() {
    let emu = Emulator::start().await.unwrap();
    let source = emu.client_credentials();
    assert_eq!(source.url(), emu.token_url());
    assert_eq!(source.client_id(), emu.client_id());
    // Proof that it used Basic: the emulator refuses Basic with a client_secret parameter,
    // so a source that also sent the secret in the form would fail here.
    token_of(source.param("client_secret", "x"))
        .await
        .expect_err("Basic plus client_secret is refused");
    token_of(emu.client_credentials()).await.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_invalid_client_after_one_request() {
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let emu = Emulator::start().await.unwrap();
        let source = ClientCredentials::new(emu.token_url(), emu.client_id(), "wrong-secret")
            .client_auth(auth.clone());
        let error = token_of(source).await.expect_err("a wrong secret");
        match &error {
            Error::OAuth {
                status,
                error,
                description,
                ..
            } => {
                assert_eq!(*status, 401, "{auth:?}");
                assert_eq!(error, "invalid_client", "{auth:?}");
                let description = description.as_deref().unwrap_or_default();
                assert!(description.contains("secret"), "{description}");
                assert!(!description.contains("wrong-secret"), "{description}");
                assert!(!description.contains(&emu.client_secret()), "{description}");
            }
            other => panic!("{auth:?}: expected Error::OAuth, got {other:?}"),
        }
        assert!(!error.is_transient(), "{auth:?}");
        let stats = emu.stats();
        assert_eq!(stats.token_requests, 1, "{auth:?}: not retried");
        assert_eq!(stats.token_failures, 1, "{auth:?}");
    }
}

#[tokio::test]
async fn unknown_client_and_missing_credentials_are_invalid_client() {
    let emu = Emulator::start().await.unwrap();
    let secret = emu.client_secret();

    // Basic: 401 with a Basic challenge.
    let (status, headers, body) =
        post_token(&emu, &[("grant_type", GRANT)], Some(("nobody", &secret))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(headers["www-authenticate"], "Basic realm=\"emulator\"");
    assert!(!body.to_string().contains(&secret), "{body}");

    // Form parameters: 401 without a challenge.
    let id = emu.client_id();
    for form in [
        vec![("grant_type", GRANT)],
        vec![("grant_type", GRANT), ("client_id", &id)],
        vec![("grant_type", GRANT), ("client_secret", &secret)],
        vec![
            ("grant_type", GRANT),
            ("client_id", "nobody"),
            ("client_secret", &secret),
        ],
        vec![
            ("grant_type", GRANT),
            ("client_id", &id),
            ("client_secret", ""),
        ],
    ] {
        let (status, headers, body) = post_token(&emu, &form, None).await;
        assert_eq!(status, 401, "{form:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        assert!(body["error_description"].is_string(), "{body}");
        assert!(!headers.contains_key("www-authenticate"), "{form:?}");
        assert!(!body.to_string().contains(&secret), "{body}");
    }

    // Malformed Basic: 401 with a challenge.
    let response = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic !!!")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(emu.stats().token_successes, 0);
}

#[tokio::test]
async fn awkward_ids_and_secrets_work_with_basic_and_post() {
    const ID: &str = "client:with+plus %25 and ünïcødé";
    const SECRET: &str = "s3:cr+et %41%zz with spaces, ünïcødé and 🦀:";
    let emu = Emulator::builder()
        .client_id(ID)
        .client_secret(SECRET)
        .start()
        .await
        .unwrap();
    assert_eq!(emu.client_id(), ID);
    assert_eq!(emu.client_secret(), SECRET);
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let source = ClientCredentials::new(emu.token_url(), ID, SECRET).client_auth(auth.clone());
        let token = token_of(source)
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(get_projects(&emu, &token).await, 200);
    }
    // The Basic values are form-urldecoded: a client that does not encode them (reqwest's
    // `basic_auth`) is refused, since `:`, `+` and `%` mean something else there.
    let (status, _, body) = post_token(&emu, &[("grant_type", GRANT)], Some((ID, SECRET))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(!body.to_string().contains(SECRET), "{body}");
}

#[tokio::test]
async fn scope_is_echoed_and_audience_accepted() {
    let emu = Emulator::start().await.unwrap();
    let (id, secret) = (emu.client_id(), emu.client_secret());
    let (status, headers, body) = post_token(
        &emu,
        &[
            ("grant_type", GRANT),
            ("scope", "read:devices write:devices"),
            ("audience", "https://api.example.com"),
        ],
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read:devices write:devices");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(headers["cache-control"], "no-store");

    let (status, _, body) = post_token(&emu, &[("grant_type", GRANT)], Some((&id, &secret))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("scope").is_none(),
        "no scope asked, none echoed: {body}"
    );

    for bad in ["", "a  b", "a\"b", " a"] {
        let (status, _, body) = post_token(
            &emu,
            &[("grant_type", GRANT), ("scope", bad)],
            Some((&id, &secret)),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"], "invalid_scope", "{bad:?}");
    }

    let source = emu
        .client_credentials()
        .scope("read:devices")
        .audience("https://api.example.com");
    token_of(source).await.unwrap();
}

#[tokio::test]
async fn basic_and_form_credentials_at_once_are_invalid_request() {
    let emu = Emulator::start().await.unwrap();
    let (id, secret) = (emu.client_id(), emu.client_secret());
    let form = [
        ("grant_type", GRANT),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let (status, _, body) = post_token(&emu, &form, Some((&id, &secret))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(!body.to_string().contains(&secret), "{body}");

    // A client_id parameter alone next to Basic is fine if it names the same client.
    let form = [("grant_type", GRANT), ("client_id", id.as_str())];
    let (status, _, body) = post_token(&emu, &form, Some((&id, &secret))).await;
    assert_eq!(status, 200, "{body}");
    let form = [("grant_type", GRANT), ("client_id", "someone-else")];
    let (status, _, body) = post_token(&emu, &form, Some((&id, &secret))).await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (400, &"invalid_request".into())
    );
}

#[tokio::test]
async fn other_grant_types_are_unsupported_and_jwt_bearer_still_works() {
    let emu = Emulator::start().await.unwrap();
    let (id, secret) = (emu.client_id(), emu.client_secret());
    for grant in ["password", "authorization_code", "CLIENT_CREDENTIALS"] {
        let (status, _, body) =
            post_token(&emu, &[("grant_type", grant)], Some((&id, &secret))).await;
        assert_eq!(status, 400, "{grant}");
        assert_eq!(body["error"], "unsupported_grant_type", "{grant}");
    }
    // A refresh-token grant without its refresh token is a bad request, not an unknown grant.
    let (status, _, body) = post_token(
        &emu,
        &[("grant_type", "refresh_token")],
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (400, &"invalid_request".into())
    );
    let provider = TokenProvider::new(JwtBearer::new(emu.account()));
    let token = provider.token().await.unwrap();
    assert_eq!(get_projects(&emu, token.expose_secret()).await, 200);
}

#[tokio::test]
async fn client_credentials_tokens_expire_and_are_revoked_like_the_others() {
    let emu = Emulator::builder()
        .token_ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let (id, secret) = (emu.client_id(), emu.client_secret());
    let (_, _, body) = post_token(&emu, &[("grant_type", GRANT)], Some((&id, &secret))).await;
    assert_eq!(body["expires_in"], 1);
    let short = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get_projects(&emu, &short).await, 200);

    emu.set_token_ttl(Duration::from_secs(3600));
    let long = token_of(emu.client_credentials()).await.unwrap();
    emu.revoke_all();
    assert_eq!(get_projects(&emu, &long).await, 401, "revoked");
    let fresh = token_of(emu.client_credentials()).await.unwrap();
    assert_eq!(get_projects(&emu, &fresh).await, 200);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(get_projects(&emu, &short).await, 401, "expired");
}

#[tokio::test]
async fn debug_output_never_shows_the_client_secret() {
    let builder = Emulator::builder().client_secret("builder-secret-value");
    assert!(!format!("{builder:?}").contains("builder-secret-value"));
    let emu = builder.start().await.unwrap();
    assert!(!format!("{emu:?}").contains("builder-secret-value"));
    let source = emu.client_credentials();
    assert!(!format!("{source:?}").contains("builder-secret-value"));

    let random = Emulator::start().await.unwrap();
    let other = Emulator::start().await.unwrap();
    assert_eq!(random.client_secret().len(), 40);
    assert_ne!(random.client_secret(), other.client_secret());
    assert_ne!(random.client_id(), other.client_id());
}
