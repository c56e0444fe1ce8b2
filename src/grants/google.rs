//! Google service accounts: the JSON key file, signed RS256 for the JWT-bearer grant.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::grants::jwt_bearer::JwtBearer;
use crate::signing::SigningKey;
use crate::transport::is_loopback_host;

/// The variable that names a Google service account's key file.
pub const ENV_GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// The fields of a key file that the grant uses; the file has more.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl JwtBearer {
    /// A Google service account from its JSON key file (`type: service_account`, with
    /// `private_key`, `client_email`, `private_key_id` and `token_uri`), asking for `scopes`.
    ///
    /// Assertions are signed RS256 with the file's key, `kid` = `private_key_id`, `iss` =
    /// `client_email`, `aud` = `token_uri`, and the scopes space-joined in the `scope`
    /// claim, where Google wants them. The file is read now: a missing field, a key that is
    /// not RSA or a `token_uri` that is not https (loopback hosts excepted, for emulators)
    /// is an [`Error::CredentialsFile`] naming the file and the field.
    ///
    /// Against the emulator, which plays Google's token endpoint with a key file of its own:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{JwtBearer, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// // In production: the file Google issued, e.g. from GOOGLE_APPLICATION_CREDENTIALS.
    /// let path = std::env::temp_dir().join(format!("sa-doc-{}.json", std::process::id()));
    /// std::fs::write(&path, emulator.google_key_file().to_string())?;
    ///
    /// let source = JwtBearer::google_service_account(
    ///     &path,
    ///     ["https://www.googleapis.com/auth/cloud-platform"],
    /// )?;
    /// let provider = TokenProvider::new(source);
    /// assert!(!provider.token().await?.expose_secret().is_empty());
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn google_service_account<S: AsRef<str>>(
        path: impl AsRef<Path>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::CredentialsFile {
            path: path.to_owned(),
            problem: format!("cannot read: {e}"),
        })?);
        Self::google_service_account_json(&bytes, path, scopes)
    }

    /// [`google_service_account`](Self::google_service_account) with the key file's
    /// content; errors name `path`, where it was found (Application Default Credentials
    /// find one inside another file).
    pub(crate) fn google_service_account_json<S: AsRef<str>>(
        bytes: &[u8],
        path: &Path,
        scopes: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let problem = |problem: String| Error::CredentialsFile {
            path: path.to_owned(),
            problem,
        };
        let file: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| problem(format!("not a Google key file (JSON): {e}")))?;
        if file.kind.as_deref() != Some("service_account") {
            return Err(problem(
                "field type must be \"service_account\" (user credentials and external \
                 accounts are not service account keys)"
                    .into(),
            ));
        }
        let field = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| problem(format!("field {name} is missing or empty")))
        };
        let email = field(file.client_email, "client_email")?;
        let key_id = field(file.private_key_id, "private_key_id")?;
        let token_uri = field(file.token_uri, "token_uri")?;
        check_https(&token_uri).map_err(problem)?;
        let pem = file
            .private_key
            .map(Zeroizing::new)
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| problem("field private_key is missing or empty".into()))?;
        let key = SigningKey::from_pem(pem.as_bytes())
            .map_err(|e| problem(format!("field private_key: {e}")))?
            .with_key_id(key_id)?;
        if key.signing_algorithm() != crate::SigningAlgorithm::RS256 {
            return Err(problem("field private_key must be an RSA key".into()));
        }
        let scope = scopes
            .into_iter()
            .map(|s| s.as_ref().trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let mut source = JwtBearer::signed_by(token_uri, email, key);
        if !scope.is_empty() {
            source = source.claim("scope", scope);
        }
        Ok(source)
    }

    /// [`google_service_account`](Self::google_service_account) with the key file that
    /// `GOOGLE_APPLICATION_CREDENTIALS` names; [`Error::MissingEnvVars`] when it is not set.
    pub fn google_from_env<S: AsRef<str>>(scopes: impl IntoIterator<Item = S>) -> Result<Self> {
        let path = std::env::var_os(ENV_GOOGLE_APPLICATION_CREDENTIALS)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or(Error::MissingEnvVars {
                names: vec![ENV_GOOGLE_APPLICATION_CREDENTIALS],
            })?;
        Self::google_service_account(path, scopes)
    }
}

fn check_https(url: &str) -> std::result::Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("field token_uri is not a URL: {e}"))?;
    let loopback = parsed.host_str().is_some_and(is_loopback_host);
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("field token_uri must be an https URL (plain http only to loopback hosts)".into()),
    }
}
