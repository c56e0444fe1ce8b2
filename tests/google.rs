//! Google service accounts: the JSON key file signs RS256 assertions with Google's claims,
//! and a broken file gets an error naming the field.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use token_refresh::{Error, JwtBearer, SigningKey, TokenProvider};
use token_refresh_emulator::{Answer, Emulator, ScriptedServer};

const EMAIL: &str = "robot@my-project.iam.gserviceaccount.com";
const KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

fn rsa_pem() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa-pkcs8.pem"))
        .unwrap()
}

fn key_file(token_uri: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": KEY_ID,
        "private_key": rsa_pem(),
        "client_email": EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
}

fn write(name: &str, value: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "token-refresh-google-{}-{name}.json",
        std::process::id()
    ));
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// A token server that answers every request with a token and keeps what it received.
async fn capture() -> ScriptedServer {
    ScriptedServer::start(|_| {
        Answer::json(
            200,
            r#"{"access_token":"ya29.token","token_type":"Bearer","expires_in":3599}"#,
        )
    })
    .await
    .unwrap()
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn the_assertion_has_googles_header_and_claims() {
    let server = capture().await;
    let path = write("claims", &key_file(&server.url("/token")));
    let provider = TokenProvider::new(JwtBearer::google_service_account(&path, [SCOPE]).unwrap());
    assert_eq!(
        provider.token().await.unwrap().expose_secret(),
        "ya29.token"
    );

    let received = server.received();
    assert_eq!(received.len(), 1);
    let body = received[0].text();
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("grant_type"), Some(JwtBearer::GRANT_TYPE));
    assert_eq!(
        get("scope"),
        None,
        "Google wants the scope in the assertion"
    );
    let assertion = get("assertion").unwrap();
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = decode_part(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], KEY_ID);
    assert_eq!(header["typ"], "JWT");
    let claims = decode_part(parts[1]);
    assert_eq!(claims["iss"], EMAIL);
    assert_eq!(claims["aud"], server.url("/token").as_str());
    assert_eq!(claims["scope"], SCOPE);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(
        lifetime <= 3600,
        "Google accepts at most an hour: {lifetime}"
    );
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn the_signature_verifies_against_the_registered_public_key() {
    let emulator = Emulator::start().await.unwrap();
    let public = SigningKey::from_pem(rsa_pem())
        .unwrap()
        .with_key_id(KEY_ID)
        .unwrap()
        .public_jwk()
        .unwrap();
    emulator.register_key(EMAIL, &public).unwrap();
    let path = write("emulator", &key_file(&emulator.token_url()));
    let provider = TokenProvider::new(JwtBearer::google_service_account(&path, [SCOPE]).unwrap());
    provider.token().await.unwrap();
    assert_eq!(emulator.stats().token_successes, 1);
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_broken_key_file_names_the_field() {
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for field in ["private_key", "client_email", "private_key_id", "token_uri"] {
        let mut file = key_file("https://oauth2.googleapis.com/token");
        file.as_object_mut().unwrap().remove(field);
        cases.push((file, field));
    }
    let mut user = key_file("https://oauth2.googleapis.com/token");
    user["type"] = json!("authorized_user");
    cases.push((user, "type"));
    let mut http = key_file("http://oauth2.example.com/token");
    http["token_uri"] = json!("http://oauth2.example.com/token");
    cases.push((http, "https"));
    let mut ec = key_file("https://oauth2.googleapis.com/token");
    ec["private_key"] = json!(
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/ec-pkcs8.pem")
        )
        .unwrap()
    );
    cases.push((ec, "RSA"));
    for (i, (file, says)) in cases.into_iter().enumerate() {
        let path = write(&format!("broken-{i}"), &file);
        let error = JwtBearer::google_service_account(&path, [SCOPE]).unwrap_err();
        assert!(matches!(error, Error::CredentialsFile { .. }), "{error:?}");
        assert!(error.to_string().contains(says), "{says}: {error}");
        assert!(!error.to_string().contains("PRIVATE KEY"), "{error}");
        std::fs::remove_file(&path).ok();
    }
}
