//! The RFC 7523 JWT-bearer grant: an assertion signed for a service account, or one signed
//! elsewhere and read from a file.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::credentials::ServiceAccount;
use crate::dt;
use crate::error::{Error, Result};
use crate::exchange::TokenEndpoint;
use crate::signing::{self, Jws, Signer, SigningKey};
use crate::source::TokenSource;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// Lifetime of the signed assertion (`exp - iat`). DT accepts at most one hour, and the
/// assertion is used once, immediately, so its length matters only for clock skew.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// What [`Error::InsecureTransport`] says would be sent, and how to allow it.
const SENDING: &str = "the signed JWT assertion";
const ALLOW_WITH: &str = "`JwtBearer::allow_http(true)`; for a provider from \
    `TokenProvider::discover()`, build it as \
    `TokenProvider::new(JwtBearer::new(ServiceAccount::discover()?).allow_http(true))`";

/// A [`TokenSource`] for the RFC 7523 JWT-bearer grant: it exchanges an assertion for an
/// access token at a [`TokenEndpoint`].
///
/// - [`JwtBearer::new`] signs the assertion for a [`ServiceAccount`] (HS256): header
///   `{"alg":"HS256","kid":KEY_ID,"typ":"JWT"}`, claims `iss` = email, `aud` = token URL (or
///   [`audience`](Self::audience)), `iat` (backdated a few seconds for clock skew) and `exp`
///   = `iat` + 3600, signed with the secret's UTF-8 bytes — what DT's identity service
///   expects. `sub` and `jti` are opt-in.
/// - [`JwtBearer::from_assertion_file`] sends an assertion signed elsewhere (a Kubernetes
///   projected service-account token, a workload identity token), read from its file at
///   every exchange, so a token rotated on disk is picked up.
///
/// The form is `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=…`, plus
/// `scope` if [`scope`](Self::scope) was set. Everything about the request itself (its own
/// client without redirects, timeouts, the response parsing, scrubbing) is the
/// [`TokenEndpoint`]'s. Constructing a `JwtBearer` does no I/O.
///
/// # Example
///
/// Against the emulator (the `token-refresh-emulator` crate, a dev-dependency), offline:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{JwtBearer, ServiceAccount, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// // The emulator's account names its token URL, as a DT credentials file does; an account
/// // built with `ServiceAccount::new(key_id, email, secret)` uses DT's unless told otherwise.
/// let account: ServiceAccount = emulator.account();
/// let source = JwtBearer::new(account).token_url(emulator.token_url());
/// let provider = TokenProvider::new(source); // nothing is fetched until the first token()
///
/// let token = provider.token().await?;
/// assert!(!token.expose_secret().is_empty());
/// assert_eq!(emulator.stats().token_successes, 1);
/// # Ok(()) }
/// ```
///
/// [`from_assertion_file`](Self::from_assertion_file) has an example of its own.
#[derive(Clone)]
pub struct JwtBearer {
    assertion: Assertion,
    endpoint: TokenEndpoint,
    audience: Option<String>,
    scopes: Vec<String>,
    resources: Vec<String>,
}

#[derive(Clone)]
enum Assertion {
    Signed {
        account: ServiceAccount,
        subject: Option<String>,
        jti: bool,
    },
    File(PathBuf),
    Key {
        signer: Arc<dyn Signer>,
        issuer: String,
        subject: Option<String>,
        claims: Vec<(String, Value)>,
    },
}

impl JwtBearer {
    /// The `grant_type` of RFC 7523 §2.1.
    pub const GRANT_TYPE: &'static str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

    /// Signs assertions for `account`. The token URL is the account's `tokenEndpoint` when
    /// its credentials file named one, else DT's [`dt::TOKEN_URL`].
    pub fn new(account: ServiceAccount) -> Self {
        let token_url = account.token_url().unwrap_or(dt::TOKEN_URL).to_owned();
        Self {
            assertion: Assertion::Signed {
                account,
                subject: None,
                jti: false,
            },
            endpoint: TokenEndpoint::new(token_url),
            audience: None,
            scopes: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// Sends the assertion in the file at `path` (a Kubernetes projected service-account
    /// token, a workload identity token) to `token_url`. The file is read afresh at every
    /// exchange (never cached, so a rotated assertion is used as soon as it is on disk), its
    /// surrounding whitespace trimmed. Does no I/O.
    ///
    /// A missing, unreadable, empty or whitespace-only file is an [`Error::AssertionFile`]
    /// naming the path, and nothing is sent. It is not retried within a refresh; once the
    /// provider's [cool-down](crate::TokenProviderBuilder::cooldown) has passed, the next
    /// refresh reads the file again. [`subject`](Self::subject), [`jti`](Self::jti) and
    /// [`audience`](Self::audience) do not apply: the assertion is signed elsewhere.
    /// [`scope`](Self::scope) does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{JwtBearer, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// // Another system signs the assertion and writes it to a file.
    /// let path = std::env::temp_dir()
    ///     .join(format!("token-refresh-doc-assertion-{}.jwt", std::process::id()));
    /// std::fs::write(&path, emulator.signed_assertion() + "\n")?;
    ///
    /// let source = JwtBearer::from_assertion_file(emulator.token_url(), &path);
    /// let provider = TokenProvider::new(source);
    /// let token = provider.token().await?;
    ///
    /// // It rotates the assertion; the next exchange reads the new one.
    /// std::fs::write(&path, emulator.signed_assertion())?;
    /// provider.invalidate(&token);
    /// let fresh = provider.token().await?;
    /// assert!(!fresh.ptr_eq(&token));
    /// assert_eq!(emulator.stats().token_successes, 2);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn from_assertion_file(token_url: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            assertion: Assertion::File(path.into()),
            endpoint: TokenEndpoint::new(token_url),
            audience: None,
            scopes: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// Signs assertions with `signer` — a [`SigningKey`](crate::SigningKey) (RS256, PS256,
    /// ES256, EdDSA, HS256) or a [`Signer`] that calls a KMS — as `issuer`, for `token_url`.
    ///
    /// Each assertion has the header `alg` (the signer's), `typ: JWT` and `kid` (if the signer
    /// has one), and the claims `iss` = `issuer`, `aud` = the token URL (or
    /// [`audience`](Self::audience)), `iat` (backdated a few seconds for clock skew), `exp` =
    /// `iat` + 180 s, a fresh random `jti` (so a server with replay checks accepts every
    /// retry), `sub` if [`subject`](Self::subject) is set, and any [`claim`](Self::claim).
    /// The signer is called once per exchange, bounded by the request
    /// [`timeout`](Self::timeout). Does no I/O.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{JwtBearer, SigningKey, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// let key = SigningKey::from_pem(
    ///     "-----BEGIN PRIVATE KEY-----
    /// MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
    /// -----END PRIVATE KEY-----",
    /// )?
    /// .with_key_id("robot-key-1")?;
    /// // The server knows the public key: here, the emulator.
    /// emulator.register_key("robot@example.com", &key.public_jwk().unwrap())?;
    ///
    /// let source = JwtBearer::signed_by(emulator.token_url(), "robot@example.com", key)
    ///     .subject("robot@example.com")
    ///     .scope("read:devices");
    /// let provider = TokenProvider::new(source);
    /// assert!(!provider.token().await?.expose_secret().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn signed_by(
        token_url: impl Into<String>,
        issuer: impl Into<String>,
        signer: impl Signer,
    ) -> Self {
        Self {
            assertion: Assertion::Key {
                signer: Arc::new(signer),
                issuer: issuer.into(),
                subject: None,
                claims: Vec::new(),
            },
            endpoint: TokenEndpoint::new(token_url),
            audience: None,
            scopes: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// Adds the claim `name` with `value` to assertions signed with a key
    /// ([`signed_by`](Self::signed_by)); a second call with the same name replaces it. `iat`,
    /// `exp` and `jti` are always the crate's. Default: none.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        if let Assertion::Key { claims, .. } = &mut self.assertion {
            let name = name.into();
            claims.retain(|(n, _)| *n != name);
            claims.push((name, value.into()));
        }
        self
    }

    /// Sets the token endpoint, which is also the signed assertion's `aud` unless
    /// [`audience`](Self::audience) is set. Default: the account's `tokenEndpoint`, else
    /// [`dt::TOKEN_URL`].
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint = self.endpoint.with_url(url.into());
        self
    }

    /// Sets the signed assertion's `aud`, for servers whose expected audience is not the
    /// token URL (an issuer URL, an API identifier). Default: the token URL.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Asks for `scope` (RFC 6749 §3.3): one scope, or several separated by spaces; call it
    /// again to add more. They are sent space-joined as the `scope` parameter. Default: no
    /// `scope` parameter (the server's default scopes).
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        super::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Names a resource the token is for (RFC 8707 `resource`, sent with the token request;
    /// an absolute URI, e.g. the API's base URL); repeat for more. Default: none.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds a `sub` claim to signed assertions (RFC 7523 asks for one; DT does not).
    /// Default: no `sub`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        if let Assertion::Signed { subject: sub, .. } | Assertion::Key { subject: sub, .. } =
            &mut self.assertion
        {
            *sub = Some(subject.into());
        }
        self
    }

    /// Adds a random `jti` claim to each assertion signed for a [`ServiceAccount`], for
    /// servers that reject replays. Default: `false` (assertions signed with a key always
    /// have one).
    pub fn jti(mut self, enabled: bool) -> Self {
        if let Assertion::Signed { jti, .. } = &mut self.assertion {
            *jti = enabled;
        }
        self
    }

    /// Asks for DPoP-bound tokens: every token request carries a proof signed with `key`;
    /// see [`TokenEndpoint::dpop`]. Default: bearer tokens.
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.endpoint = self.endpoint.dpop(key);
        self
    }

    /// Allows a plain `http://` token URL on a host that is not loopback. The assertion is a
    /// credential that can be exchanged for tokens until it expires, so this is off by
    /// default; loopback hosts (tests, emulators) are always allowed. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.endpoint = self.endpoint.allow_http(allow);
        self
    }

    /// Sets the timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// Uses `client` for token requests instead of the built-in one; see
    /// [`TokenEndpoint::http_client`]. Whatever its redirect policy, the assertion never
    /// reaches another origin. Default: a plain client without redirects, built on first use.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.endpoint = self.endpoint.http_client(client);
        self
    }

    /// The token URL requests go to.
    pub fn url(&self) -> &str {
        self.endpoint.url()
    }

    /// The assertion for one exchange: signed now, or read from its file now.
    async fn assertion(&self) -> Result<SecretString> {
        match &self.assertion {
            Assertion::Signed {
                account,
                subject,
                jti,
            } => self.sign(account, subject.as_deref(), *jti).await,
            Assertion::File(path) => read_assertion(path),
            Assertion::Key {
                signer,
                issuer,
                subject,
                claims,
            } => {
                let mut jws = Jws::new(signing::ASSERTION_LIFETIME)?
                    .extra(claims)
                    .claim("iss", issuer.as_str())
                    .claim(
                        "aud",
                        self.audience.as_deref().unwrap_or(self.endpoint.url()),
                    );
                if let Some(subject) = subject {
                    jws = jws.claim("sub", subject.as_str());
                }
                signing::mint(&**signer, jws, self.endpoint.request_timeout()).await
            }
        }
    }

    /// DT's assertion: HS256 with the secret's UTF-8 bytes, header
    /// `{"alg":"HS256","kid":KEY_ID,"typ":"JWT"}`, claims `aud`, `exp`, `iat`, `iss` (and
    /// `sub`, `jti` when asked for).
    async fn sign(
        &self,
        account: &ServiceAccount,
        subject: Option<&str>,
        jti: bool,
    ) -> Result<SecretString> {
        account.validate()?;
        let key =
            SigningKey::from_secret(account.expose_secret())?.with_key_id(account.key_id())?;
        let mut jws = Jws::new(ASSERTION_LIFETIME)?
            .claim("iss", account.email())
            .claim(
                "aud",
                self.audience.as_deref().unwrap_or(self.endpoint.url()),
            );
        if !jti {
            jws = jws.without_jti();
        }
        if let Some(subject) = subject {
            jws = jws.claim("sub", subject);
        }
        signing::mint(&key, jws, self.endpoint.request_timeout()).await
    }
}

fn read_assertion(path: &std::path::Path) -> Result<SecretString> {
    let problem = |problem: String| Error::AssertionFile {
        path: path.to_owned(),
        problem,
    };
    // A small file read once per token request: not worth a blocking-pool hop.
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    let assertion = text.trim();
    if assertion.is_empty() {
        return Err(problem("the file is empty".into()));
    }
    Ok(SecretString::from(assertion.to_owned()))
}

#[async_trait::async_trait]
impl TokenSource for JwtBearer {
    /// `jwt-bearer-{hash}`: a hash of the token URL, the audience, the scopes, the
    /// resources, and the account's key id, email, subject and secret (or the assertion
    /// file's path), so rotating the secret changes the key.
    fn store_key(&self) -> Option<String> {
        let mut key = self
            .endpoint
            .key_parts(KeyBuilder::new("jwt-bearer"))
            .optional(self.audience.as_deref())
            .part(self.scopes.join(" "));
        // Only when there are any: the keys of existing settings stay what they were.
        for resource in &self.resources {
            key = key.part("resource").part(resource);
        }
        let key = match &self.assertion {
            Assertion::Signed {
                account, subject, ..
            } => key
                .part("signed")
                .part(account.key_id())
                .part(account.email())
                .optional(subject.as_deref())
                .part(account.expose_secret()),
            Assertion::File(path) => key.part("file").part(path.as_os_str().as_encoded_bytes()),
            Assertion::Key {
                signer,
                issuer,
                subject,
                claims,
            } => {
                let mut key = key
                    .part("key")
                    .part(signer.algorithm().name())
                    .optional(signer.key_id())
                    .part(issuer)
                    .optional(subject.as_deref());
                for (name, value) in claims {
                    key = key.part(name).part(value.to_string());
                }
                key
            }
        };
        Some(key.finish())
    }

    /// The token endpoint's host and the assertion's issuer (`assertion-file` for an
    /// assertion read from a file).
    fn name(&self) -> Option<String> {
        let who = match &self.assertion {
            Assertion::Signed { account, .. } => account.email(),
            Assertion::File(_) => "assertion-file",
            Assertion::Key { issuer, .. } => issuer,
        };
        Some(self.endpoint.name_for(who))
    }

    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// This grant asking for `params`' scopes, audience (the assertion's `aud`) and
    /// resources instead of its own.
    async fn fetch_token_for(&self, params: &crate::TokenParams) -> Result<AccessToken> {
        self.with_params(params).fetch_token().await
    }

    fn store_key_for(&self, params: &crate::TokenParams) -> Option<String> {
        self.with_params(params).store_key()
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        let scope = self.scopes.join(" ");
        let mut request = self
            .endpoint
            .request()
            .describe(SENDING, ALLOW_WITH)
            .param("grant_type", Self::GRANT_TYPE)
            .minted_param("assertion", Box::new(|| Box::pin(self.assertion())));
        if !scope.is_empty() {
            request = request.param("scope", &scope);
        }
        for resource in &self.resources {
            request = request.param("resource", resource);
        }
        if let Assertion::Signed { account, .. } = &self.assertion {
            request = request.scrub(account.expose_secret());
        }
        request.send().await
    }
}

impl JwtBearer {
    fn with_params(&self, params: &crate::TokenParams) -> Self {
        let mut this = self.clone();
        if !params.scopes().is_empty() {
            this.scopes = params.scopes().to_vec();
        }
        if let Some(audience) = params.audience_value() {
            this.audience = Some(audience.to_owned());
        }
        if !params.resources().is_empty() {
            this.resources = params.resources().to_vec();
        }
        this
    }
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("JwtBearer");
        match &self.assertion {
            Assertion::Signed {
                account,
                subject,
                jti,
            } => s
                .field("account", account)
                .field("subject", subject)
                .field("jti", jti),
            Assertion::File(path) => s.field("assertion_file", path),
            Assertion::Key {
                signer,
                issuer,
                subject,
                claims,
            } => s
                .field("signer", signer)
                .field("issuer", issuer)
                .field("subject", subject)
                .field("claims", &claims.iter().map(|(n, _)| n).collect::<Vec<_>>()),
        };
        s.field("endpoint", &self.endpoint)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("resources", &self.resources)
            .finish()
    }
}
