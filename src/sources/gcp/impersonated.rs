//! Service-account impersonation: a token of one principal exchanged for a service
//! account's access token through IAM Credentials' `generateAccessToken`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result, Scrubber};
use crate::exchange::TokenEndpoint;
use crate::source::TokenSource;
use crate::sources::call::{Call, PlainHttp, cloud, lifetime_until, parse_url};
use crate::store::KeyBuilder;
use crate::token::{AccessToken, is_b64token};

/// IAM Credentials' base URL.
pub const IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";

/// The scope Google's libraries ask for when none is given: all Google Cloud APIs, each
/// still bound by the account's IAM roles.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The lifetime asked of `generateAccessToken` unless set: an hour, the longest IAM
/// Credentials grants without an organization policy, and what every other Google token
/// lives.
pub const DEFAULT_IMPERSONATION_LIFETIME: Duration = Duration::from_secs(3600);

/// A [`TokenSource`] for a service account's access tokens, obtained by impersonating it:
/// the `source`'s token (a user's, another service account's, a federated one) is sent to
/// IAM Credentials' `generateAccessToken` for the account, which answers with a token of
/// its own (`lifetime`, `scope`, `delegates` as set). The caller needs the Service Account
/// Token Creator role on the account.
///
/// `POST {url}` with `{"scope": […], "lifetime": "3600s", "delegates": […]}` and the
/// source's token as bearer; the answer's `expireTime` (RFC 3339) is the token's expiry.
/// A refusal is an [`Error::Cloud`] with IAM's status and message (a 403 says which role
/// is missing), the source's token scrubbed from it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::gcp::{ImpersonatedServiceAccount, MetadataServer};
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// let me = MetadataServer::new().endpoint(emulator.origin()); // on Google Cloud: ::new()
/// let target = "deployer@my-project.iam.gserviceaccount.com";
/// let source = ImpersonatedServiceAccount::from_url(me, emulator.impersonation_url(target))
///     .lifetime(std::time::Duration::from_secs(600));
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// assert_eq!(emulator.impersonations(), [(target.to_owned(), "600s".to_owned())]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ImpersonatedServiceAccount {
    source: Arc<dyn TokenSource>,
    target: Target,
}

/// Where and how to call `generateAccessToken`: shared with `external_account`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) lifetime: Duration,
    pub(crate) delegates: Vec<String>,
    pub(crate) endpoint: TokenEndpoint,
}

impl Target {
    pub(crate) fn new(url: String) -> Self {
        Self {
            endpoint: TokenEndpoint::new(url.clone()),
            url,
            scopes: Vec::new(),
            lifetime: DEFAULT_IMPERSONATION_LIFETIME,
            delegates: Vec::new(),
        }
    }

    /// The service account's email, from the URL's `serviceAccounts/{email}:…`.
    pub(crate) fn email(&self) -> Option<&str> {
        let rest = self.url.split("/serviceAccounts/").nth(1)?;
        let email = rest.split(':').next()?;
        (!email.is_empty()).then_some(email)
    }

    pub(crate) fn key_parts(&self, key: KeyBuilder) -> KeyBuilder {
        let mut key = key
            .part(&self.url)
            .part(self.scopes().join(" "))
            .part(self.lifetime.as_secs().to_le_bytes())
            .part((self.delegates.len() as u64).to_le_bytes());
        for delegate in &self.delegates {
            key = key.part(delegate);
        }
        key
    }

    fn scopes(&self) -> Vec<&str> {
        if self.scopes.is_empty() {
            vec![CLOUD_PLATFORM_SCOPE]
        } else {
            self.scopes.iter().map(String::as_str).collect()
        }
    }

    /// `generateAccessToken` with `bearer`.
    pub(crate) async fn generate(&self, bearer: &AccessToken) -> Result<AccessToken> {
        let service = format!(
            "IAM Credentials generateAccessToken for {}",
            self.email().unwrap_or(&self.url)
        );
        let url = parse_url(&self.url, "service_account_impersonation_url")?;
        let delegates: Vec<String> = self
            .delegates
            .iter()
            .map(|d| {
                if d.starts_with("projects/") {
                    d.clone()
                } else {
                    format!("projects/-/serviceAccounts/{d}")
                }
            })
            .collect();
        let body = json!({
            "scope": self.scopes(),
            "lifetime": format!("{}s", self.lifetime.as_secs()),
            "delegates": delegates,
        });
        let answer = Call::post_json(
            &self.endpoint,
            &service,
            url,
            &body,
            PlainHttp::https("https (plain http only to loopback)"),
        )
        .bearer(bearer.expose_secret())
        .send()
        .await?;
        if !answer.is_success() {
            let scrubber = Scrubber::default().secret(bearer.expose_secret());
            let hint = match answer.status {
                401 => "the source credentials' token was refused",
                403 => {
                    "the source credentials need the Service Account Token Creator role \
                     (roles/iam.serviceAccountTokenCreator) on the service account"
                }
                404 => "no such service account",
                _ => "",
            };
            return Err(answer.status_error(&service, &scrubber, &[], hint));
        }
        let json = answer.json(&service)?;
        let token = match json.get("accessToken") {
            Some(Value::String(t)) if !t.is_empty() && is_b64token(t) => t,
            Some(_) => {
                return Err(Error::InvalidField {
                    field: "accessToken",
                    reason: "it is not an RFC 6750 b64token string".into(),
                });
            }
            None => return Err(Error::MissingField("accessToken")),
        };
        let expire_time = match json.get("expireTime") {
            Some(Value::String(t)) => t,
            Some(_) => {
                return Err(Error::InvalidField {
                    field: "expireTime",
                    reason: "it is not a string".into(),
                });
            }
            None => return Err(Error::MissingField("expireTime")),
        };
        let expires_at = humantime::parse_rfc3339_weak(expire_time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .ok_or_else(|| Error::InvalidField {
                field: "expireTime",
                reason: "it is not an RFC 3339 UTC time".into(),
            })?;
        let lifetime =
            lifetime_until(expires_at.as_secs_f64(), answer.sent_wall).ok_or_else(|| {
                cloud(
                    &service,
                    "the token's expireTime has passed (is the clock right?)",
                    false,
                )
            })?;
        AccessToken::issued_at(token.as_str(), answer.sent_at, lifetime)
    }
}

impl ImpersonatedServiceAccount {
    /// Impersonates `service_account` (an email) with `source`'s tokens, at
    /// [`IAM_CREDENTIALS_URL`]. Does no I/O.
    pub fn new(source: impl TokenSource, service_account: impl AsRef<str>) -> Self {
        let url = format!(
            "{IAM_CREDENTIALS_URL}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            service_account.as_ref()
        );
        Self::from_url(source, url)
    }

    /// Impersonates through the whole `generateAccessToken` URL, as credentials files name
    /// it (`service_account_impersonation_url`); a test points it at a local server. Does
    /// no I/O.
    pub fn from_url(source: impl TokenSource, url: impl Into<String>) -> Self {
        Self::from_arc(Arc::new(source), url.into())
    }

    pub(crate) fn from_arc(source: Arc<dyn TokenSource>, url: String) -> Self {
        Self {
            source,
            target: Target::new(url),
        }
    }

    /// Asks for `scope` (space-separated, or call again to add). Default:
    /// [`CLOUD_PLATFORM_SCOPE`].
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        crate::grants::add_scopes(&mut self.target.scopes, scope.as_ref());
        self
    }

    /// The lifetime asked for (whole seconds; more than an hour needs an organization
    /// policy). Default: [`DEFAULT_IMPERSONATION_LIFETIME`] (1 hour).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.target.lifetime = lifetime;
        self
    }

    /// The delegation chain: service accounts (emails) each granted Token Creator on the
    /// next, the last on the target. Default: none.
    pub fn delegates<S: Into<String>>(mut self, delegates: impl IntoIterator<Item = S>) -> Self {
        self.target.delegates = delegates.into_iter().map(Into::into).collect();
        self
    }

    /// The timeout of one `generateAccessToken` call, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.target.endpoint = self.target.endpoint.timeout(timeout);
        self
    }

    /// The impersonated service account, from the URL.
    pub fn service_account(&self) -> Option<&str> {
        self.target.email()
    }
}

#[async_trait::async_trait]
impl TokenSource for ImpersonatedServiceAccount {
    /// `gcp-impersonated-{hash}`: the URL (the account), scopes, lifetime, delegates, and
    /// the source's own key if it has one.
    fn store_key(&self) -> Option<String> {
        Some(
            self.target
                .key_parts(KeyBuilder::new("gcp-impersonated"))
                .optional(self.source.store_key())
                .finish(),
        )
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        let bearer = self.source.fetch_token().await?;
        self.target.generate(&bearer).await
    }
}

impl fmt::Debug for ImpersonatedServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpersonatedServiceAccount")
            .field("url", &self.target.url)
            .field("scopes", &self.target.scopes)
            .field("lifetime", &self.target.lifetime)
            .field("delegates", &self.target.delegates)
            .finish_non_exhaustive()
    }
}
