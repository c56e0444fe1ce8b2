//! Google's Application Default Credentials: the file `GOOGLE_APPLICATION_CREDENTIALS`
//! names, then gcloud's well-known file, then the metadata server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use zeroize::Zeroizing;

use super::external_account::ExternalAccount;
use super::impersonated::{CLOUD_PLATFORM_SCOPE, ImpersonatedServiceAccount};
use super::metadata::MetadataServer;
use crate::error::{Error, Result};
use crate::grants::client::ClientAuth;
use crate::grants::client::OAuthClient;
use crate::grants::google::ENV_GOOGLE_APPLICATION_CREDENTIALS;
use crate::grants::jwt_bearer::JwtBearer;
use crate::grants::refresh_token::RefreshToken;
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::store::SourceStore;
use crate::token::AccessToken;

/// The variable that moves gcloud's configuration directory, and with it the well-known
/// credentials file.
pub const ENV_CLOUDSDK_CONFIG: &str = "CLOUDSDK_CONFIG";

/// Google's OAuth2 token endpoint: where an `authorized_user` file's refresh token is
/// spent unless the file names another `token_uri`.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The well-known file's name in gcloud's configuration directory.
const WELL_KNOWN_FILE: &str = "application_default_credentials.json";

/// What the chain looks for, in its error.
const CHAIN: &str = "Google Application Default Credentials";

/// A [`TokenSource`] for Google's Application Default Credentials (AIP-4110): the one
/// entry point that works on a laptop, in CI and on Google Cloud.
///
/// [`new`](Self::new) looks, in order, at
/// 1. the file `GOOGLE_APPLICATION_CREDENTIALS` names (a missing or bad file is an error
///    then, not a reason to look further);
/// 2. gcloud's well-known file, `$CLOUDSDK_CONFIG/application_default_credentials.json`,
///    else `~/.config/gcloud/…` (`%APPDATA%\gcloud\…` on Windows), written by `gcloud auth
///    application-default login`;
/// 3. the metadata server ([`MetadataServer`]), checked at the first token request with
///    [`MetadataServer::detect`] (bounded by
///    [`METADATA_DETECT_TIMEOUT`](super::METADATA_DETECT_TIMEOUT) and remembered), so that
///    off Google Cloud the first token request fails within about a second with
///    [`Error::NoCredentialsFound`] listing what was tried.
///
/// A file is one of four types: `service_account` (a key, through
/// [`JwtBearer::google_service_account`]), `authorized_user` (a user's refresh token,
/// through [`RefreshToken`]), `external_account` ([`ExternalAccount`]) or
/// `impersonated_service_account` ([`ImpersonatedServiceAccount`] over the file's
/// `source_credentials`). Files are read at construction; nothing goes over the network
/// until the first token request.
///
/// # Testing
///
/// Point `GOOGLE_APPLICATION_CREDENTIALS` at a file whose URLs are local, or build from a
/// file with [`from_file`](Self::from_file); for the fallback, point the metadata server at
/// a local one with [`metadata_server`](Self::metadata_server) or `GCE_METADATA_HOST`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::gcp::ApplicationDefaultCredentials;
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// // What `gcloud auth application-default login` writes, here for the emulator:
/// let path = std::env::temp_dir().join(format!("adc-doc-{}.json", std::process::id()));
/// std::fs::write(&path, emulator.authorized_user_file().to_string())?;
///
/// let source = ApplicationDefaultCredentials::from_file(&path, ["https://www.googleapis.com/auth/cloud-platform"])?;
/// assert_eq!(source.kind(), "authorized_user");
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// # std::fs::remove_file(&path)?;
/// # Ok(()) }
/// ```
pub struct ApplicationDefaultCredentials {
    found: Found,
    path: Option<PathBuf>,
    scopes: Vec<String>,
}

enum Found {
    ServiceAccount(JwtBearer),
    AuthorizedUser(RefreshToken),
    ExternalAccount(ExternalAccount),
    Impersonated(ImpersonatedServiceAccount),
    Metadata {
        server: MetadataServer,
        tried: Vec<String>,
    },
}

impl ApplicationDefaultCredentials {
    /// The chain with the scope [`CLOUD_PLATFORM_SCOPE`]; see the type's docs. Reads the
    /// environment and the credentials file now; an unusable file is an
    /// [`Error::CredentialsFile`] naming it.
    pub fn new() -> Result<Self> {
        Self::with_scopes([CLOUD_PLATFORM_SCOPE])
    }

    /// The chain asking for `scopes` (for keys, external accounts, impersonation and the
    /// metadata server; a user's refresh token keeps the scopes of its login). An empty
    /// list means [`CLOUD_PLATFORM_SCOPE`].
    pub fn with_scopes<S: AsRef<str>>(scopes: impl IntoIterator<Item = S>) -> Result<Self> {
        let scopes = scope_list(scopes);
        let mut tried = Vec::new();
        match std::env::var_os(ENV_GOOGLE_APPLICATION_CREDENTIALS).filter(|p| !p.is_empty()) {
            Some(path) => {
                return Self::from_file(PathBuf::from(path), &scopes).map_err(|e| match e {
                    Error::CredentialsFile { path, problem } => Error::CredentialsFile {
                        path,
                        problem: format!(
                            "{problem} (named by {ENV_GOOGLE_APPLICATION_CREDENTIALS})"
                        ),
                    },
                    other => other,
                });
            }
            None => tried.push(format!("{ENV_GOOGLE_APPLICATION_CREDENTIALS} (not set)")),
        }
        match well_known_file() {
            Some(path) if path.is_file() => return Self::from_file(path, &scopes),
            Some(path) => tried.push(format!("{} (no such file)", path.display())),
            None => tried.push(format!(
                "gcloud's well-known file (neither {ENV_CLOUDSDK_CONFIG} nor the home \
                 directory's variable is set)"
            )),
        }
        let mut server = MetadataServer::new();
        for scope in &scopes {
            server = server.scope(scope);
        }
        Ok(Self {
            found: Found::Metadata { server, tried },
            path: None,
            scopes,
        })
    }

    /// The credentials in the file at `path`, of any of the four types, asking for
    /// `scopes` as [`with_scopes`](Self::with_scopes) does. Read now.
    pub fn from_file<S: AsRef<str>>(
        path: impl AsRef<Path>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let scopes = scope_list(scopes);
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::CredentialsFile {
            path: path.to_owned(),
            problem: format!("cannot read: {e}"),
        })?);
        let found = found_in(&bytes, path, &scopes, true)?;
        Ok(Self {
            found,
            path: Some(path.to_owned()),
            scopes,
        })
    }

    /// The metadata server the chain falls back to, e.g. one at a local address for a
    /// test; the chain's scopes are added to it. No effect when a file was found. Default:
    /// [`MetadataServer::new`] (`GCE_METADATA_HOST`, or the real address).
    pub fn metadata_server(mut self, server: MetadataServer) -> Self {
        if let Found::Metadata {
            server: current, ..
        } = &mut self.found
        {
            let mut server = server;
            for scope in &self.scopes {
                server = server.scope(scope);
            }
            *current = server;
        }
        self
    }

    /// What was found: `service_account`, `authorized_user`, `external_account`,
    /// `impersonated_service_account`, or `metadata_server`.
    pub fn kind(&self) -> &'static str {
        match self.found {
            Found::ServiceAccount(_) => "service_account",
            Found::AuthorizedUser(_) => "authorized_user",
            Found::ExternalAccount(_) => "external_account",
            Found::Impersonated(_) => "impersonated_service_account",
            Found::Metadata { .. } => "metadata_server",
        }
    }

    /// The file the credentials came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn source(&self) -> &dyn TokenSource {
        match &self.found {
            Found::ServiceAccount(s) => s,
            Found::AuthorizedUser(s) => s,
            Found::ExternalAccount(s) => s,
            Found::Impersonated(s) => s,
            Found::Metadata { server, .. } => server,
        }
    }
}

fn scope_list<S: AsRef<str>>(scopes: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut list = Vec::new();
    for scope in scopes {
        crate::grants::add_scopes(&mut list, scope.as_ref());
    }
    if list.is_empty() {
        list.push(CLOUD_PLATFORM_SCOPE.to_owned());
    }
    list
}

/// gcloud's well-known credentials file.
fn well_known_file() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var(ENV_CLOUDSDK_CONFIG) {
        return Some(dir.join(WELL_KNOWN_FILE));
    }
    if cfg!(windows) {
        var("APPDATA").map(|dir| dir.join("gcloud").join(WELL_KNOWN_FILE))
    } else {
        var("HOME").map(|dir| dir.join(".config").join("gcloud").join(WELL_KNOWN_FILE))
    }
}

/// The source a credentials file's content describes; `outer` allows
/// `impersonated_service_account` (not inside another).
fn found_in(bytes: &[u8], path: &Path, scopes: &[String], outer: bool) -> Result<Found> {
    let problem = |problem: String| Error::CredentialsFile {
        path: path.to_owned(),
        problem,
    };
    let json: Value =
        serde_json::from_slice(bytes).map_err(|e| problem(format!("not JSON: {e}")))?;
    let field = |name: &str| -> Result<String> {
        json.get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| problem(format!("field {name} is missing or empty")))
    };
    let kind = field("type")?;
    match kind.as_str() {
        "service_account" => Ok(Found::ServiceAccount(
            JwtBearer::google_service_account_json(bytes, path, scopes)?,
        )),
        "authorized_user" => {
            let client = OAuthClient::new(field("client_id")?, field("client_secret")?)
                .client_auth(ClientAuth::Post);
            let token_url = json
                .get("token_uri")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .unwrap_or(GOOGLE_TOKEN_URL)
                .to_owned();
            Ok(Found::AuthorizedUser(RefreshToken::new(
                token_url,
                client,
                field("refresh_token")?,
            )))
        }
        "external_account" => {
            let mut account = ExternalAccount::parse(&json).map_err(problem)?;
            for scope in scopes {
                account = account.scope(scope);
            }
            Ok(Found::ExternalAccount(account))
        }
        "impersonated_service_account" if outer => {
            let url = field("service_account_impersonation_url")?;
            let inner = json
                .get("source_credentials")
                .ok_or_else(|| problem("field source_credentials is missing".into()))?;
            let inner_bytes = Zeroizing::new(inner.to_string().into_bytes());
            let source: Arc<dyn TokenSource> = match found_in(
                &inner_bytes,
                path,
                &[CLOUD_PLATFORM_SCOPE.to_owned()],
                false,
            )
            .map_err(|e| match e {
                Error::CredentialsFile { path, problem } => Error::CredentialsFile {
                    path,
                    problem: format!("source_credentials: {problem}"),
                },
                other => other,
            })? {
                Found::ServiceAccount(s) => Arc::new(s),
                Found::AuthorizedUser(s) => Arc::new(s),
                Found::ExternalAccount(s) => Arc::new(s),
                Found::Impersonated(s) => Arc::new(s),
                Found::Metadata { server, .. } => Arc::new(server),
            };
            let delegates: Vec<String> = json
                .get("delegates")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|d| d.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut account =
                ImpersonatedServiceAccount::from_arc(source, url).delegates(delegates);
            for scope in scopes {
                account = account.scope(scope);
            }
            Ok(Found::Impersonated(account))
        }
        "impersonated_service_account" => Err(problem(
            "source_credentials of type impersonated_service_account are not supported: \
             list the chain in `delegates` instead"
                .into(),
        )),
        other => Err(problem(format!(
            "field type {other:?} is not supported: expected service_account, \
             authorized_user, external_account or impersonated_service_account"
        ))),
    }
}

#[async_trait::async_trait]
impl TokenSource for ApplicationDefaultCredentials {
    /// The key of what was found.
    fn store_key(&self) -> Option<String> {
        self.source().store_key()
    }

    /// The key of what was found, for `params`.
    fn store_key_for(&self, params: &TokenParams) -> Option<String> {
        self.source().store_key_for(params)
    }

    fn attach_store(&self, store: SourceStore) {
        self.source().attach_store(store);
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.probe_metadata().await?;
        self.source().fetch_token().await
    }

    /// What was found, asked for `params` (scopes replace the chain's own; a service
    /// account key also takes an audience).
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        self.probe_metadata().await?;
        self.source().fetch_token_for(params).await
    }
}

impl ApplicationDefaultCredentials {
    /// With the metadata server as what was found: whether it answers, or the chain's
    /// error listing everything tried.
    async fn probe_metadata(&self) -> Result<()> {
        if let Found::Metadata { server, tried } = &self.found
            && let Err(reason) = server.probe().await
        {
            let mut tried = tried.clone();
            tried.push(format!("{} ({reason})", server.service()));
            return Err(Error::NoCredentialsFound {
                chain: CHAIN,
                tried,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for ApplicationDefaultCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationDefaultCredentials")
            .field("kind", &self.kind())
            .field("path", &self.path)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}
