//! DT service account credentials, where to find them, and the provider they make.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::dt::{ENV_CREDENTIALS_FILE, ENV_EMAIL, ENV_KEY_ID, ENV_SECRET};
use crate::error::{Error, Result};

/// A service account: key id, email and secret, plus the token endpoint when the
/// credentials file names one.
///
/// `Debug` shows the key id and email and redacts the secret.
///
/// ```
/// use token_refresh::ServiceAccount;
///
/// let account = ServiceAccount::new("key-id", "sa@example.com", "s3cr3t");
/// assert_eq!(account.email(), "sa@example.com");
/// assert!(!format!("{account:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
pub struct ServiceAccount {
    key_id: String,
    email: String,
    secret: SecretString,
    token_url: Option<String>,
}

impl ServiceAccount {
    /// Credentials from their three parts. Empty values are reported when a token is first
    /// requested ([`Error::EmptyCredential`]).
    pub fn new(
        key_id: impl Into<String>,
        email: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            key_id: key_id.into(),
            email: email.into(),
            secret: SecretString::from(secret.into()),
            token_url: None,
        }
    }

    /// Reads `DT_SERVICE_ACCOUNT_KEY_ID`, `DT_SERVICE_ACCOUNT_SECRET` and
    /// `DT_SERVICE_ACCOUNT_EMAIL`. Variables that are unset or empty are an
    /// [`Error::MissingEnvVars`] naming every one of them.
    pub fn from_env() -> Result<Self> {
        let [key_id, secret, email] = [ENV_KEY_ID, ENV_SECRET, ENV_EMAIL].map(non_empty_env);
        match (key_id, secret, email) {
            (Some(key_id), Some(secret), Some(email)) => Ok(Self::new(key_id, email, secret)),
            _ => Err(Error::MissingEnvVars {
                names: [ENV_KEY_ID, ENV_SECRET, ENV_EMAIL]
                    .into_iter()
                    .filter(|name| non_empty_env(name).is_none())
                    .collect(),
            }),
        }
    }

    /// Reads a DT credentials file:
    ///
    /// ```json
    /// {"serviceAccount": {"keyId": "…", "secret": "…", "email": "…",
    ///                     "algorithm": "HS256", "tokenEndpoint": "https://…/oauth2/token"}}
    /// ```
    ///
    /// `keyId`, `secret` and `email` are required and must not be empty. `algorithm` may be
    /// left out; when present it must be `HS256`. `tokenEndpoint`, when present, becomes the
    /// token URL of [`JwtBearer`](crate::JwtBearer). Other fields are ignored. Errors name the
    /// file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
        Self::from_file_content(&bytes, path)
    }

    /// Finds credentials the way the examples do: the file named by `DT_CREDENTIALS_FILE`
    /// if that is set, else the three `DT_SERVICE_ACCOUNT_*` variables.
    ///
    /// With nothing set at all this is [`Error::NoCredentials`]; with some variables set and
    /// others missing, an [`Error::MissingEnvVars`] naming every missing one. A file that is
    /// named but broken is its error, never a fallback to the variables.
    pub fn discover() -> Result<Self> {
        if let Some(path) = non_empty_env(ENV_CREDENTIALS_FILE) {
            return Self::from_file(path);
        }
        if [ENV_KEY_ID, ENV_SECRET, ENV_EMAIL]
            .iter()
            .all(|name| non_empty_env(name).is_none())
        {
            return Err(Error::NoCredentials);
        }
        Self::from_env()
    }

    /// The key id, sent as the JWT header's `kid`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The email, sent as the JWT's `iss`.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The secret. Keep it out of logs.
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The token endpoint named by the credentials file, if any.
    pub fn token_url(&self) -> Option<&str> {
        self.token_url.as_deref()
    }

    /// Sets the token endpoint these credentials belong to. Default: none, which means
    /// [`JwtBearer`](crate::JwtBearer) uses DT's endpoint.
    pub fn with_token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = Some(url.into());
        self
    }

    /// Checks that no part is empty.
    pub(crate) fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("service account key id", self.key_id.as_str()),
            ("service account email", self.email.as_str()),
            ("service account secret", self.expose_secret()),
        ] {
            if value.trim().is_empty() {
                return Err(Error::EmptyCredential { field });
            }
        }
        Ok(())
    }

    /// Parses the credentials file's content; `path` is for error messages.
    fn from_file_content(bytes: &[u8], path: &Path) -> Result<Self> {
        Self::from_json(bytes).map_err(|problem| match problem {
            FileProblem::Algorithm(alg) => Error::UnsupportedAlgorithm(alg),
            FileProblem::Content(problem) => file_error(path, problem),
        })
    }

    fn from_json(bytes: &[u8]) -> std::result::Result<Self, FileProblem> {
        let root: Value = serde_json::from_slice(bytes)
            .map_err(|e| FileProblem::Content(format!("not valid JSON ({e})")))?;
        let account = root
            .get("serviceAccount")
            .ok_or_else(|| FileProblem::Content("field `serviceAccount` is missing".into()))?;
        if !account.is_object() {
            return Err(FileProblem::Content(
                "field `serviceAccount` is not an object".into(),
            ));
        }
        let field = |name: &str| -> std::result::Result<Option<String>, FileProblem> {
            match account.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(FileProblem::Content(format!(
                    "field `serviceAccount.{name}` is not a string"
                ))),
            }
        };
        let required = |name: &str| {
            field(name)?.ok_or_else(|| {
                FileProblem::Content(format!("field `serviceAccount.{name}` is missing or empty"))
            })
        };
        let key_id = required("keyId")?;
        let secret = required("secret")?;
        let email = required("email")?;
        if let Some(alg) = field("algorithm")?
            && alg != "HS256"
        {
            return Err(FileProblem::Algorithm(alg));
        }
        let mut account = Self::new(key_id, email, secret);
        account.token_url = field("tokenEndpoint")?;
        Ok(account)
    }
}

enum FileProblem {
    Algorithm(String),
    Content(String),
}

fn file_error(path: &Path, problem: String) -> Error {
    Error::CredentialsFile {
        path: PathBuf::from(path),
        problem,
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("key_id", &self.key_id)
            .field("email", &self.email)
            .field("secret", &"[REDACTED]")
            .field("token_url", &self.token_url)
            .finish()
    }
}

/// Parses a credentials file's bytes; for the property tests, which must not touch the disk.
#[doc(hidden)]
pub fn parse_credentials_json(bytes: &[u8]) -> Result<ServiceAccount> {
    ServiceAccount::from_file_content(bytes, Path::new("<memory>"))
}
