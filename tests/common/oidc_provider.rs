//! panva's `oidc-provider` (a certified OpenID Provider, npm) as a child process for the
//! interoperability tests: `tests/oidc-provider/server.mjs` run by Node on a free port of
//! 127.0.0.1, stopped when dropped (and when the test process dies: the script exits when
//! its standard input closes).
//!
//! A test that needs it fails, never skips, when Node or the npm packages are missing, and
//! says how to get them: `scripts/test --setup`, or `npm ci --prefix tests/oidc-provider`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// How long the server may take to print its ready line: Node's start and a 2048-bit RSA
/// key generation, on a loaded two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The timeout of the helper's own requests (stats, JWKS, userinfo).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The running server and what its ready line said.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// `{issuer}/token`.
    pub token_endpoint: String,
    /// The resources it issues tokens for (RFC 8707): two, `https://api-a.test/` and
    /// `https://api-b.test/`; any other is refused with `invalid_target`.
    pub resources: Vec<String>,
    /// Refresh tokens of [`client("refresh")`](Self::client), minted at start through the
    /// provider's models (what an authorization-code flow leaves), for both resources: three,
    /// each of its own grant (spending one twice revokes its grant only). None when
    /// `--auth-methods` leaves out `client_secret_basic`, the refresh client's.
    pub refresh_tokens: Vec<String>,
    /// Its scope: `openid offline_access api:read api:write`.
    pub refresh_scope: String,
    clients: Value,
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
}

/// A client the server knows.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub id: String,
    /// Empty for a client without a secret (`private_key_jwt`, a JWT-bearer client).
    pub secret: String,
}

impl OidcProvider {
    /// Starts a server with the default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with `args` for `server.mjs` (`--auth-methods a,b`, `--auth-algs a,b`,
    /// `--access-token-ttl S`). Panics, saying what to install, without Node or the packages;
    /// panics with the server's own output if it does not get ready.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = dir();
        check_packages(&dir);
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `node` ({e}): the interoperability tests need Node.js 20 or newer \
                     and npm. Install them (Debian/Ubuntu: `apt-get install -y nodejs npm`; \
                     `scripts/test --setup` does), then `npm ci --prefix tests/oidc-provider`"
                )
            });
        let stdin = child.stdin.take().expect("stdin is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(
            child.stderr.take().expect("stderr is piped"),
            Arc::clone(&stderr),
        );
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            // Read to the end, so that the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(r#"{"ready":true"#)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the stderr thread take the last words.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "oidc-provider did not get ready ({}): its stderr:\n{}",
                    match e {
                        mpsc::RecvTimeoutError::Timeout => format!("not within {READY_TIMEOUT:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "it exited".to_owned(),
                    },
                    stderr.lock().unwrap()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let text = |name: &str| ready[name].as_str().expect(name).to_owned();
        Self {
            issuer: text("issuer"),
            token_endpoint: text("token_endpoint"),
            resources: ready["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .map(|r| r.as_str().expect("a resource").to_owned())
                .collect(),
            refresh_tokens: ready["refresh_tokens"]
                .as_array()
                .expect("refresh_tokens")
                .iter()
                .map(|r| r.as_str().expect("a refresh token").to_owned())
                .collect(),
            refresh_scope: text("refresh_scope"),
            clients: ready["clients"].clone(),
            child,
            _stdin: stdin,
            stderr,
        }
    }

    /// The client `name`: `basic` (`client_secret_basic`), `post` (`client_secret_post`),
    /// `secret_jwt` (`client_secret_jwt`), `key` (`private_key_jwt` with the public keys of
    /// `tests/keys/`: `rsa-1`, `ec-1`, `ed25519-1`), `refresh` (the minted refresh token's,
    /// `client_secret_basic`), `jwt_bearer` (no client authentication; JWT-bearer assertions
    /// signed with `rsa-1`).
    pub fn client(&self, name: &str) -> TestClient {
        let client = &self.clients[name];
        TestClient {
            id: client["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no client {name:?}"))
                .to_owned(),
            secret: client["secret"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Resource A, `https://api-a.test/`.
    pub fn resource_a(&self) -> &str {
        &self.resources[0]
    }

    /// Resource B, `https://api-b.test/`.
    pub fn resource_b(&self) -> &str {
        &self.resources[1]
    }

    /// The token requests the server has received so far, by grant type (`None`: all).
    pub async fn token_requests(&self, grant_type: Option<&str>) -> u64 {
        let stats = self.get_json("/test/stats").await;
        match grant_type {
            None => stats["token_requests"].as_u64().expect("token_requests"),
            Some(grant_type) => stats["by_grant_type"][grant_type].as_u64().unwrap_or(0),
        }
    }

    /// The token requests so far that carried the client authentication `method`
    /// (`client_secret_basic`, `client_secret_post`, `client_secret_jwt`, `private_key_jwt`,
    /// `none`), as the server script saw them on the wire.
    pub async fn token_requests_by(&self, method: &str) -> u64 {
        let stats = self.get_json("/test/stats").await;
        stats["by_client_auth"][method].as_u64().unwrap_or(0)
    }

    /// Checks `token` as a resource server for `audience` would: a JWT signed by this
    /// server's key (from its `jwks_uri`), with `iss` this issuer, `aud` `audience` and `exp`
    /// in the future. Returns its claims; panics with the reason if it is not such a token.
    pub async fn verify(&self, token: &str, audience: &str) -> Value {
        super::jsonwebtoken();
        let header = jsonwebtoken::decode_header(token)
            .unwrap_or_else(|e| panic!("the access token is not a JWT: {e}"));
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(self.get_json("/jwks").await).expect("a JWK set");
        let kid = header.kid.as_deref().expect("the access token has a kid");
        let jwk = jwks
            .find(kid)
            .expect("the access token's key is the server's");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("a usable JWK");
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap_or_else(|e| panic!("the access token is not one for {audience}: {e}"))
            .claims
    }

    /// The status of the server's userinfo endpoint (`/me`) for `token`: 200 for a token
    /// issued for it (an OpenID token without a resource), 401 for one for a resource.
    pub async fn userinfo_status(&self, token: &str) -> u16 {
        client()
            .get(format!("{}/me", self.issuer))
            .bearer_auth(token)
            .send()
            .await
            .expect("the userinfo endpoint answers")
            .status()
            .as_u16()
    }

    async fn get_json(&self, path: &str) -> Value {
        let body = client()
            .get(format!("{}{path}", self.issuer))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims of a JWT, unverified; `None` for a token that is not a JWT (an opaque one).
pub fn claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// A `SigningKey` of `tests/keys/` with `kid`, as the server's `client("key")` has it.
pub fn test_key(file: &str, kid: &str) -> token_refresh::SigningKey {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file);
    token_refresh::SigningKey::from_pem_file(path)
        .and_then(|key| key.with_key_id(kid))
        .unwrap_or_else(|e| panic!("tests/keys/{file}: {e}"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .expect("a plain client")
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// Fails, saying how to install them, unless `node_modules` holds every package of the lock
/// file at its locked version.
fn check_packages(dir: &Path) {
    let install = "run `scripts/test --setup` (the README's test command installs it), or \
                   `npm ci --prefix tests/oidc-provider`";
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package-lock.json"))
            .expect("tests/oidc-provider/package-lock.json is in the repository"),
    )
    .expect("package-lock.json is JSON");
    let packages = lock["packages"].as_object().expect("a v3 lock file");
    for (path, locked) in packages {
        if path.is_empty() {
            continue;
        }
        let Some(want) = locked["version"].as_str() else {
            continue;
        };
        let installed = std::fs::read_to_string(dir.join(path).join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        match installed.as_ref().and_then(|p| p["version"].as_str()) {
            Some(have) if have == want => {}
            Some(have) => panic!(
                "tests/oidc-provider/{path} is {have}, the lock file wants {want}: {install}"
            ),
            None => panic!(
                "tests/oidc-provider/{path} is not installed (the interoperability tests run \
                 panva's oidc-provider with Node): {install}"
            ),
        }
    }
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}
