//! The emulator validates JWT-bearer assertions like a real identity service, guards its API
//! with the tokens it issues, and produces the faults it is told to.
//!
//! Real time throughout: these tests talk over loopback sockets.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use token_refresh::{Error, JwtBearer, TokenProvider, TokenSource};
use token_refresh_emulator::{Emulator, Fault, Stats};

const GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// What goes into a hand-made assertion; starts out valid for the emulator's account.
struct Assertion {
    alg: Algorithm,
    kid: String,
    secret: String,
    claims: Value,
}

impl Assertion {
    fn valid(emu: &Emulator) -> Self {
        let account = emu.account();
        let iat = now();
        Self {
            alg: Algorithm::HS256,
            kid: account.key_id().to_owned(),
            secret: account.expose_secret().to_owned(),
            claims: json!({
                "iss": account.email(),
                "aud": emu.token_url(),
                "iat": iat,
                "exp": iat + 3600,
            }),
        }
    }

    fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims[name] = value;
        self
    }

    fn sign(&self) -> String {
        common::jsonwebtoken();
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_secret(self.secret.as_bytes()).expect("a secret");
        jsonwebtoken::encode(&header, &self.claims, &key).expect("sign")
    }

    fn form(&self) -> String {
        format!("assertion={}&grant_type={GRANT}", self.sign())
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

async fn post_token(emu: &Emulator, form: String) -> Reply {
    let response = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("token request");
    read_reply(response).await
}

async fn read_reply(response: reqwest::Response) -> Reply {
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

async fn get_projects(emu: &Emulator, token: Option<&str>) -> Reply {
    let mut request = reqwest::Client::new().get(format!("{}/projects", emu.api_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read_reply(request.send().await.expect("API request")).await
}

/// Asserts a §5.2 error and returns its description.
async fn expect_error(emu: &Emulator, form: String, error: &str) -> String {
    let reply = post_token(emu, form).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], error, "{body}");
    body["error_description"]
        .as_str()
        .expect("an error_description")
        .to_owned()
}

async fn valid_token(emu: &Emulator) -> String {
    let reply = post_token(emu, Assertion::valid(emu).form()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

#[tokio::test]
async fn valid_assertion_gets_a_token_response() {
    let emu = Emulator::start().await.unwrap();
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["cache-control"], "no-store");
    let body = reply.json();
    let token = body["access_token"].as_str().unwrap();
    assert!(token.len() >= 32, "{token}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
}

#[tokio::test]
async fn form_decoding_handles_escapes_and_rejects_bad_ones() {
    let emu = Emulator::start().await.unwrap();
    // Unescaped colons and any parameter order are fine too.
    let assertion = Assertion::valid(&emu).sign();
    let form =
        format!("grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion={assertion}");
    assert_eq!(post_token(&emu, form).await.status, 200);

    let form = format!("assertion={assertion}&grant_type=urn%3Aietf%zz");
    expect_error(&emu, form, "invalid_request").await;

    let form = format!("assertion={assertion}&assertion={assertion}&grant_type={GRANT}");
    expect_error(&emu, form, "invalid_request").await;

    // `+` decodes to a space, so this grant type is not the URN.
    let form = format!("assertion={assertion}&grant_type=urn+{GRANT}");
    expect_error(&emu, form, "unsupported_grant_type").await;
}

#[tokio::test]
async fn wrong_content_type_is_invalid_request() {
    let emu = Emulator::start().await.unwrap();
    let response = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/json")
        .body(Assertion::valid(&emu).form())
        .send()
        .await
        .unwrap();
    let reply = read_reply(response).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "invalid_request");
}

#[tokio::test]
async fn wrong_signature_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let mut assertion = Assertion::valid(&emu);
    assertion.secret = "not-the-secret-not-the-secret-not-the".into();
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("signature"), "{description}");
}

#[tokio::test]
async fn wrong_aud_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let assertion = Assertion::valid(&emu).claim(
        "aud",
        json!("https://identity.disruptive-technologies.com/oauth2/token"),
    );
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("aud"), "{description}");
    // Close is not enough: the audience must match exactly.
    let assertion = Assertion::valid(&emu).claim("aud", json!(format!("{}/", emu.token_url())));
    expect_error(&emu, assertion.form(), "invalid_grant").await;
}

#[tokio::test]
async fn wrong_iss_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let assertion = Assertion::valid(&emu).claim("iss", json!("someone@else.example"));
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("iss"), "{description}");
}

#[tokio::test]
async fn expired_assertion_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let assertion = Assertion::valid(&emu)
        .claim("iat", json!(now() - 7200))
        .claim("exp", json!(now() - 3600));
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("expired"), "{description}");
}

#[tokio::test]
async fn iat_in_the_future_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let assertion = Assertion::valid(&emu)
        .claim("iat", json!(now() + 600))
        .claim("exp", json!(now() + 4200));
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("iat"), "{description}");
    // Within the 60 s leeway is fine.
    let assertion = Assertion::valid(&emu).claim("iat", json!(now() + 30));
    assert_eq!(post_token(&emu, assertion.form()).await.status, 200);
}

#[tokio::test]
async fn missing_claims_are_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    for claim in ["iat", "exp", "iss", "aud"] {
        let mut assertion = Assertion::valid(&emu);
        assertion.claims.as_object_mut().unwrap().remove(claim);
        let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
        assert!(description.contains(claim), "{claim}: {description}");
    }
}

#[tokio::test]
async fn unknown_kid_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let mut assertion = Assertion::valid(&emu);
    assertion.kid = "some-other-key".into();
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("kid"), "{description}");
}

#[tokio::test]
async fn other_alg_is_invalid_grant() {
    let emu = Emulator::start().await.unwrap();
    let mut assertion = Assertion::valid(&emu);
    assertion.alg = Algorithm::HS512;
    let description = expect_error(&emu, assertion.form(), "invalid_grant").await;
    assert!(description.contains("HS256"), "{description}");
    let form = format!("assertion=not.a-jwt&grant_type={GRANT}");
    expect_error(&emu, form, "invalid_grant").await;
}

#[tokio::test]
async fn wrong_grant_type_is_unsupported_grant_type() {
    let emu = Emulator::start().await.unwrap();
    let form = format!(
        "assertion={}&grant_type=password",
        Assertion::valid(&emu).sign()
    );
    expect_error(&emu, form, "unsupported_grant_type").await;
}

#[tokio::test]
async fn missing_assertion_is_invalid_request() {
    let emu = Emulator::start().await.unwrap();
    expect_error(&emu, format!("grant_type={GRANT}"), "invalid_request").await;
    expect_error(
        &emu,
        format!("assertion=&grant_type={GRANT}"),
        "invalid_request",
    )
    .await;
    let form = format!("assertion={}", Assertion::valid(&emu).sign());
    expect_error(&emu, form, "invalid_request").await;
}

#[tokio::test]
async fn errors_never_echo_the_assertion_or_secret() {
    let emu = Emulator::start().await.unwrap();
    let mut assertion = Assertion::valid(&emu);
    assertion.kid = "unknown".into();
    let jwt = assertion.sign();
    let reply = post_token(&emu, format!("assertion={jwt}&grant_type={GRANT}")).await;
    assert!(!reply.body.contains(&jwt));
    assert!(!reply.body.contains(emu.account().expose_secret()));
}

#[tokio::test]
async fn wrong_method_or_path() {
    let emu = Emulator::start().await.unwrap();
    let client = reqwest::Client::new();
    let response = client.get(emu.token_url()).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let url = format!("http://{}/oauth2/other", emu.addr());
    assert_eq!(client.post(url).send().await.unwrap().status(), 404);
    assert_eq!(emu.stats().token_requests, 0);
}

#[tokio::test]
async fn token_works_on_the_api_and_a_bogus_one_does_not() {
    let emu = Emulator::start().await.unwrap();
    let token = valid_token(&emu).await;

    let reply = get_projects(&emu, Some(&token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["projects"][0]["name"], "projects/emulated-project");
    assert_eq!(body["nextPageToken"], "");

    for bogus in [Some("0123456789abcdef0123456789abcdef"), None] {
        let reply = get_projects(&emu, bogus).await;
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let body = reply.json();
        assert_eq!(body["code"], 401);
        assert_eq!(
            body["help"],
            "https://developer.disruptive-technologies.com/docs/error-codes#401"
        );
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn echo_returns_json_and_rejects_the_rest() {
    let emu = Emulator::start().await.unwrap();
    let token = valid_token(&emu).await;
    let client = reqwest::Client::new();
    let url = format!("{}/echo", emu.api_url());
    let sent = r#"{"hello":["world",1]}"#;
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .body(sent)
        .send()
        .await
        .unwrap();
    let reply = read_reply(response).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, sent);

    let response = client
        .post(&url)
        .bearer_auth(&token)
        .body("not json")
        .send()
        .await
        .unwrap();
    let reply = read_reply(response).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["code"], 400);

    let response = client.post(&url).body(sent).send().await.unwrap();
    assert_eq!(response.status(), 401);

    let other = format!("{}/devices", emu.api_url());
    let response = client.get(other).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn revoke_all_makes_tokens_401() {
    let emu = Emulator::start().await.unwrap();
    let token = valid_token(&emu).await;
    assert_eq!(get_projects(&emu, Some(&token)).await.status, 200);
    emu.revoke_all();
    let reply = get_projects(&emu, Some(&token)).await;
    assert_eq!(reply.status, 401);
    assert!(reply.headers.contains_key("www-authenticate"));
    let fresh = valid_token(&emu).await;
    assert_eq!(get_projects(&emu, Some(&fresh)).await.status, 200);
}

#[tokio::test]
async fn token_ttl_is_reflected_and_enforced() {
    let emu = Emulator::builder()
        .token_ttl(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert_eq!(reply.json()["expires_in"], 120);

    emu.set_token_ttl(Duration::from_secs(1));
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    let body = reply.json();
    assert_eq!(body["expires_in"], 1);
    let token = body["access_token"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_projects(&emu, Some(token)).await.status, 401);
}

#[tokio::test]
async fn stats_count_requests_and_outcomes() {
    let emu = Emulator::start().await.unwrap();
    let token = valid_token(&emu).await;
    expect_error(&emu, format!("grant_type={GRANT}"), "invalid_request").await;
    emu.inject_fault(Fault::status(503), 1);
    assert_eq!(
        post_token(&emu, Assertion::valid(&emu).form()).await.status,
        503
    );
    get_projects(&emu, Some(&token)).await;
    get_projects(&emu, None).await;
    get_projects(&emu, Some("bogus")).await;
    assert_eq!(
        emu.stats(),
        Stats {
            token_requests: 3,
            token_successes: 1,
            token_failures: 2,
            api_requests: 3,
            api_unauthorized: 2,
            ..Stats::default()
        }
    );
    let debug = format!("{emu:?}");
    assert!(debug.contains("token_requests: 3"), "{debug}");
    assert!(!debug.contains(emu.account().expose_secret()), "{debug}");
}

#[tokio::test]
async fn status_fault_with_retry_after() {
    let emu = Emulator::start().await.unwrap();
    emu.inject_fault(Fault::status(503).with_retry_after("2"), 2);
    for _ in 0..2 {
        let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers["retry-after"], "2");
    }
    // Only `times` requests are faulted.
    assert_eq!(
        post_token(&emu, Assertion::valid(&emu).form()).await.status,
        200
    );

    let date = "Wed, 21 Oct 2037 07:28:00 GMT";
    emu.inject_fault(Fault::status(429).with_retry_after(date), 1);
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["retry-after"], date);
    let stats = emu.stats();
    assert_eq!((stats.token_successes, stats.token_failures), (1, 3));
}

#[tokio::test]
async fn oauth_error_fault() {
    let emu = Emulator::start().await.unwrap();
    emu.inject_fault(Fault::oauth_error(401, "invalid_client"), 1);
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_client");
}

#[tokio::test]
async fn garbage_fault() {
    let emu = Emulator::start().await.unwrap();
    emu.inject_fault(Fault::Garbage, 1);
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert_eq!(reply.status, 200);
    assert!(
        serde_json::from_str::<Value>(&reply.body).is_err(),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn drop_connection_fault() {
    let emu = Emulator::start().await.unwrap();
    emu.inject_fault(Fault::DropConnection, 1);
    let result = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Assertion::valid(&emu).form())
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        post_token(&emu, Assertion::valid(&emu).form()).await.status,
        200
    );
    let stats = emu.stats();
    assert_eq!((stats.token_requests, stats.token_failures), (2, 1));
}

#[tokio::test]
async fn delay_fault() {
    let emu = Emulator::start().await.unwrap();
    emu.inject_fault(Fault::Delay(Duration::from_millis(300)), 1);
    let started = std::time::Instant::now();
    let reply = post_token(&emu, Assertion::valid(&emu).form()).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn jwt_bearer_sees_faults_as_errors() {
    let emu = Emulator::start().await.unwrap();
    let source = JwtBearer::new(emu.account());
    emu.inject_fault(Fault::status(503).with_retry_after("2"), 1);
    match source.fetch_token().await {
        Err(Error::HttpStatus {
            status: 503,
            retry_after,
        }) => assert_eq!(retry_after, Some(Duration::from_secs(2))),
        other => panic!("{other:?}"),
    }
    emu.inject_fault(Fault::oauth_error(400, "invalid_grant"), 1);
    let error = source.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"));
    assert!(source.fetch_token().await.is_ok());
}

#[tokio::test]
async fn token_provider_end_to_end() {
    let emu = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(JwtBearer::new(emu.account()));
    let token = provider.token().await.unwrap();
    assert_eq!(emu.stats().token_requests, 1);
    assert_eq!(emu.stats().token_successes, 1);
    let reply = get_projects(&emu, Some(token.expose_secret())).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn dropping_the_emulator_stops_the_server() {
    let emu = Emulator::start().await.unwrap();
    let url = emu.token_url();
    drop(emu);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let result = reqwest::Client::new().post(url).send().await;
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn emulator_can_be_shared_across_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Emulator>();
    assert_send_sync::<Fault>();
}
