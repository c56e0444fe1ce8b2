//! Azure managed identity through the Instance Metadata Service (IMDS): VMs, scale sets,
//! AKS nodes, Container Instances.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::{UserAssignedId, resource_for, resource_of};
use crate::error::{Error, Result, Scrubber};
use crate::exchange::TokenEndpoint;
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::sources::call::{Answer, Call, PlainHttp, lifetime_until, parse_url, seconds};
use crate::store::KeyBuilder;
use crate::token::{AccessToken, is_b64token};

/// IMDS's token endpoint. Link-local: a request to it never leaves the host, which makes
/// the plain http it speaks safe.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// The variable Azure's SDKs read for another IMDS host (AAD Pod Identity's, or a test's):
/// scheme, host and port, e.g. `http://127.0.0.1:8080`; the token path is appended.
pub const ENV_AZURE_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

/// The IMDS API version asked for: the one every Azure SDK uses for tokens, answered by
/// every IMDS, whose answers carry `expires_on`.
pub const IMDS_API_VERSION: &str = "2018-02-01";

/// IMDS's own host, where plain http is allowed.
const OWN_HOSTS: &[&str] = &["169.254.169.254"];

/// IMDS answers 404 while a new VM's identity is not yet in place and 410 while it
/// updates: Azure's retry guidance treats both as transient, as it does 429 and 5xx.
const IMDS_TRANSIENT: &[u16] = &[404, 410];

/// A [`TokenSource`] for an Azure managed identity through IMDS (a VM, a scale set, an AKS
/// node's kubelet identity, Container Instances).
///
/// `GET {endpoint}?api-version=2018-02-01&resource=…` with `Metadata: true`, plus
/// `client_id`, `object_id` or `msi_res_id` for a user-assigned identity. The token's
/// expiry is the answer's `expires_on` (Unix seconds, as a string or a number); an answer
/// without it is refused ([`Error::MissingField`]). 404 and 410 are transient (a new VM's
/// identity on its way), as are 429 and 5xx; 400 (an identity not assigned to this VM) is
/// not. Plain http goes only to IMDS's own address and loopback.
///
/// # Testing
///
/// Point it at a local server, never at the real address: `.endpoint(url)`. The emulator
/// plays IMDS:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::azure::Imds;
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// let source = Imds::new("https://management.azure.com/")
///     .endpoint(emulator.imds_endpoint()); // on Azure: leave it out
/// let provider = TokenProvider::new(source);
/// assert!(!provider.token().await?.expose_secret().is_empty());
/// assert_eq!(emulator.cloud_stats().azure_imds_tokens, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Imds {
    url: String,
    from_env: bool,
    resource: String,
    identity: Option<UserAssignedId>,
    api_version: String,
    endpoint: TokenEndpoint,
    allow_http: bool,
}

impl Imds {
    /// Tokens for `resource` (`https://management.azure.com/`, or a scope such as
    /// `https://vault.azure.net/.default`, whose `/.default` is dropped) from the
    /// system-assigned identity, at [`IMDS_ENDPOINT`] (or at
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`, read now, when it is set). Does no I/O.
    pub fn new(resource: impl Into<String>) -> Self {
        let host = std::env::var(ENV_AZURE_POD_IDENTITY_AUTHORITY_HOST)
            .ok()
            .map(|h| h.trim().trim_end_matches('/').to_owned())
            .filter(|h| !h.is_empty());
        let url = match &host {
            Some(host) => format!("{host}/metadata/identity/oauth2/token"),
            None => IMDS_ENDPOINT.to_owned(),
        };
        Self {
            endpoint: TokenEndpoint::new(url.clone()),
            url,
            from_env: host.is_some(),
            resource: resource_of(&resource.into()),
            identity: None,
            api_version: IMDS_API_VERSION.to_owned(),
            allow_http: false,
        }
    }

    /// IMDS's token endpoint at `url` (the whole URL, e.g. the emulator's
    /// `imds_endpoint()`), for tests and emulators. Default: [`IMDS_ENDPOINT`], or
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`'s.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self.from_env = false;
        self.endpoint = self.endpoint.clone().with_url(self.url.clone());
        self
    }

    /// Uses the user-assigned identity `id` instead of the system-assigned one. Default:
    /// the system-assigned identity.
    pub fn user_assigned(mut self, id: UserAssignedId) -> Self {
        self.identity = Some(id);
        self
    }

    /// The `api-version` asked for. Default: [`IMDS_API_VERSION`].
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Allows plain http to a host that is neither loopback nor IMDS's. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// The timeout of one request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// The resource tokens are asked for.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    fn service(&self) -> String {
        let from = if self.from_env {
            format!(" (from {ENV_AZURE_POD_IDENTITY_AUTHORITY_HOST})")
        } else {
            String::new()
        };
        format!("Azure IMDS at {}{from}", self.url)
    }
}

/// Turns a managed-identity answer (IMDS's, App Service's) into a token: `access_token`,
/// `token_type` Bearer if given, and `expires_on` in Unix seconds (a string or a number),
/// counted from when the request was sent.
pub(super) fn parse_answer(answer: &Answer, service: &str) -> Result<AccessToken> {
    let json = answer.json(service)?;
    let token = match json.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() && is_b64token(t) => t,
        Some(Value::String(t)) if t.is_empty() => {
            return Err(Error::InvalidField {
                field: "access_token",
                reason: "it is empty".into(),
            });
        }
        Some(_) => {
            return Err(Error::InvalidField {
                field: "access_token",
                reason: "it is not an RFC 6750 b64token string".into(),
            });
        }
        None => return Err(Error::MissingField("access_token")),
    };
    match json.get("token_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            return Err(Error::UnsupportedTokenType(Scrubber::default().text(t)));
        }
        Some(_) => {
            return Err(Error::InvalidField {
                field: "token_type",
                reason: "it is not a string".into(),
            });
        }
    }
    let expires_on = match json.get("expires_on") {
        None | Some(Value::Null) => return Err(Error::MissingField("expires_on")),
        value => seconds(value).ok_or_else(|| Error::InvalidField {
            field: "expires_on",
            reason: "it is not a Unix time in seconds".into(),
        })?,
    };
    let lifetime =
        lifetime_until(expires_on, answer.sent_wall).ok_or_else(|| Error::InvalidField {
            field: "expires_on",
            reason: "it has passed (is the clock right?)".into(),
        })?;
    AccessToken::issued_at(token.as_str(), answer.sent_at, lifetime)
}

/// An unsuccessful managed-identity answer, with a hint for the common cases.
pub(super) fn refusal(
    answer: &Answer,
    service: &str,
    transient: &[u16],
    scrubber: &Scrubber,
) -> Error {
    let hint = match answer.status {
        400 => "is this identity assigned to this resource, and the resource spelled right?",
        401 | 403 => "check the identity's access to this endpoint",
        _ => "",
    };
    answer.status_error(service, scrubber, transient, hint)
}

#[async_trait::async_trait]
impl TokenSource for Imds {
    /// `azure-imds-{hash}`: the endpoint, the resource and the user-assigned identity.
    /// Processes that share a store share a token only if they name the same identity:
    /// with the system-assigned one, they must all run on one VM (or name a user-assigned
    /// identity).
    fn store_key(&self) -> Option<String> {
        let key = KeyBuilder::new("azure-imds")
            .part(&self.url)
            .part(&self.resource);
        Some(UserAssignedId::key_parts(self.identity.as_ref(), key).finish())
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch(&self.resource).await
    }

    /// A token for the one resource `params` name (a resource, or a scope whose
    /// `/.default` is dropped); [`Error::Config`] for an audience or several resources.
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        let resource = resource_for(params, &self.resource, &self.service())?;
        self.fetch(&resource).await
    }
}

impl Imds {
    async fn fetch(&self, resource: &str) -> Result<AccessToken> {
        let service = self.service();
        let mut url = parse_url(&self.url, "the IMDS endpoint")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", &self.api_version);
            query.append_pair("resource", resource);
            if let Some(id) = &self.identity {
                let (name, value) = id.imds_param();
                query.append_pair(name, value);
            }
        }
        let plain = PlainHttp {
            hosts: OWN_HOSTS,
            allow_any: self.allow_http,
            allow_with: "`Imds::allow_http(true)`",
        };
        let answer = Call::get(&self.endpoint, &service, url, plain)
            .header("metadata", "true", false)
            .send()
            .await?;
        if !answer.is_success() {
            return Err(refusal(
                &answer,
                &service,
                IMDS_TRANSIENT,
                &Scrubber::default(),
            ));
        }
        parse_answer(&answer, &service)
    }
}

impl fmt::Debug for Imds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imds")
            .field("endpoint", &self.url)
            .field("resource", &self.resource)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
