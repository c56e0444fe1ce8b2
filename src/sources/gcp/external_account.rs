//! Google workload identity federation: an `external_account` credentials file, its
//! subject token read from a file, a URL or an executable at every exchange, Google STS's
//! RFC 8693 exchange, and optional service-account impersonation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::impersonated::{CLOUD_PLATFORM_SCOPE, Target};
use crate::error::{Error, Result, Scrubber};
use crate::exchange::TokenEndpoint;
use crate::grants::token_exchange::{SubjectTokenFile, SubjectTokenSource, token_types};
use crate::source::TokenSource;
use crate::sources::call::{Call, PlainHttp, describe_body, parse_url};
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// The variable that allows `external_account` executables to run: `1`. Google's rule, so
/// that a credentials file alone cannot make a process run a program.
pub const ENV_ALLOW_EXECUTABLES: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";

/// An executable's timeout when its `timeout_millis` is not set: Google's default.
pub const DEFAULT_EXECUTABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The range Google allows for `timeout_millis`: long enough for a program that asks
/// another service, short enough that a hung one does not hold a refresh for minutes.
const EXECUTABLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5_000..=120_000;

/// An executable's token is used again (not re-run) while it has at least this long to
/// live: the STS exchange that sends it takes well under a second, and half a minute
/// covers a slow exchange and clock skew between us and STS.
pub const EXECUTABLE_REUSE_MARGIN: Duration = Duration::from_secs(30);

/// Most bytes read from an executable's output or a credential URL: a token response is
/// a few KiB; the cap stops a runaway program from filling memory.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The token types an executable may return.
const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";

/// The link-local address a URL credential source may reach over plain http (Azure's
/// IMDS, which Google's Azure federation reads its subject token from).
const LINK_LOCAL: &[&str] = &["169.254.169.254"];

/// A [`TokenSource`] for Google workload identity federation: an `external_account`
/// credentials file (what `gcloud iam workload-identity-pools create-cred-config`
/// writes), for a GKE cluster elsewhere, AKS, EKS, GitHub Actions or any OIDC or SAML
/// identity provider.
///
/// At every token request the subject token is read afresh from the file's
/// `credential_source` — a `file` (text, or JSON with `subject_token_field_name`), a `url`
/// (with `headers`, and the same `format`), or an `executable` (run only with
/// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`, bounded by its `timeout_millis`, its
/// output reused until it nears its `expiration_time`) — and exchanged at Google STS
/// (`token_url`) with Google's RFC 8693 form: `grant_type` token-exchange, `audience`,
/// `scope`, `requested_token_type` access token, `subject_token_type`, `subject_token`,
/// client authentication if the file has a client. With
/// `service_account_impersonation_url`, the STS token is then exchanged for the service
/// account's own through IAM Credentials ([`ImpersonatedServiceAccount`](super::ImpersonatedServiceAccount)),
/// with `service_account_impersonation.token_lifetime_seconds` as its lifetime.
///
/// A file with an unknown `credential_source` (or AWS's `environment_id`, which this crate
/// does not implement: it needs SigV4 signing) is an [`Error::CredentialsFile`] naming the
/// field. A subject token that cannot be had — a missing or empty file, a URL that fails,
/// an executable that exits non-zero, prints garbage or hangs — is an
/// [`Error::SubjectToken`] naming where it was read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use token_refresh::TokenProvider;
/// use token_refresh::gcp::ExternalAccount;
/// use token_refresh_emulator::{Emulator, FEDERATED_SUBJECT};
///
/// let emulator = Emulator::start().await?;
/// let dir = std::env::temp_dir().join(format!("wif-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// // The projected token (a Kubernetes service-account token, an OIDC token):
/// let token = dir.join("token");
/// let audience = emulator.workload_identity_audience();
/// std::fs::write(&token, emulator.federated_token(FEDERATED_SUBJECT, &audience, Duration::from_secs(3600)).await)?;
/// // The credentials file, as gcloud writes it (here with the emulator's STS):
/// let config = dir.join("credentials.json");
/// std::fs::write(&config, emulator.external_account_file(serde_json::json!({"file": token})).to_string())?;
///
/// let source = ExternalAccount::from_file(&config)?;
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    sts: TokenEndpoint,
    scopes: Vec<String>,
    client: Option<(String, SecretString)>,
    user_project: Option<String>,
    subject: Arc<dyn SubjectTokenSource>,
    /// What the subject token is read from, for `Debug` and the store key.
    describe: String,
    impersonation: Option<Target>,
}

/// The fields of an `external_account` file this crate reads.
#[derive(Deserialize)]
struct Config {
    #[serde(rename = "type")]
    kind: Option<String>,
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<ImpersonationOptions>,
    credential_source: Option<Value>,
    client_id: Option<String>,
    client_secret: Option<String>,
    workforce_pool_user_project: Option<String>,
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    token_lifetime_seconds: Option<u64>,
}

/// `format` of a file or URL source.
#[derive(Clone, Debug, Deserialize)]
struct Format {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

impl ExternalAccount {
    /// An `external_account` credentials file, read now: a missing field, an unknown
    /// `credential_source` or a bad `timeout_millis` is an [`Error::CredentialsFile`]
    /// naming the file and the field. Does no network I/O.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let problem = |problem: String| Error::CredentialsFile {
            path: path.to_owned(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| problem(format!("not a JSON credentials file: {e}")))?;
        Self::parse(&json).map_err(problem)
    }

    /// An `external_account` configuration given as JSON (the file's content); its
    /// problems are [`Error::Config`] naming the field.
    pub fn from_json(json: &Value) -> Result<Self> {
        Self::parse(json)
            .map_err(|problem| Error::Config(format!("external_account credentials: {problem}")))
    }

    pub(crate) fn parse(json: &Value) -> std::result::Result<Self, String> {
        let config: Config = serde_json::from_value(json.clone())
            .map_err(|e| format!("not an external_account configuration: {e}"))?;
        if config.kind.as_deref() != Some("external_account") {
            return Err("field type must be \"external_account\"".into());
        }
        let field = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("field {name} is missing or empty"))
        };
        let audience = field(config.audience, "audience")?;
        let subject_token_type = field(config.subject_token_type, "subject_token_type")?;
        let token_url = field(config.token_url, "token_url")?;
        let source = config
            .credential_source
            .ok_or_else(|| "field credential_source is missing".to_owned())?;
        let impersonation = config
            .service_account_impersonation_url
            .filter(|u| !u.trim().is_empty())
            .map(|url| {
                let mut target = Target::new(url);
                if let Some(secs) = config
                    .service_account_impersonation
                    .and_then(|o| o.token_lifetime_seconds)
                {
                    target.lifetime = Duration::from_secs(secs);
                }
                target
            });
        let impersonated_email = impersonation
            .as_ref()
            .and_then(|t| t.email().map(str::to_owned));
        let (subject, describe) =
            credential_source(&source, &audience, &subject_token_type, impersonated_email)?;
        let client = match (config.client_id, config.client_secret) {
            (Some(id), secret) if !id.is_empty() => {
                Some((id, SecretString::from(secret.unwrap_or_default())))
            }
            _ => None,
        };
        let mut account = Self {
            audience,
            subject_token_type,
            sts: TokenEndpoint::new(token_url),
            scopes: Vec::new(),
            client,
            user_project: config.workforce_pool_user_project,
            subject,
            describe,
            impersonation,
        };
        for scope in config.scopes.unwrap_or_default() {
            account = account.scope(scope);
        }
        Ok(account)
    }

    /// Asks for `scope` (space-separated, or call again to add): of STS, or of the
    /// impersonated account. Default: the file's `scopes`, else [`CLOUD_PLATFORM_SCOPE`].
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        crate::grants::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// The timeout of one STS or IAM request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.sts = self.sts.timeout(timeout);
        if let Some(target) = &mut self.impersonation {
            target.endpoint = target.endpoint.clone().timeout(timeout);
        }
        self
    }

    /// The workload identity pool provider (`audience`).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The impersonated service account, if the file names one.
    pub fn service_account(&self) -> Option<&str> {
        self.impersonation.as_ref().and_then(Target::email)
    }

    fn scopes(&self) -> String {
        if self.scopes.is_empty() {
            CLOUD_PLATFORM_SCOPE.to_owned()
        } else {
            self.scopes.join(" ")
        }
    }
}

/// The subject token source a `credential_source` describes, and a description of it.
fn credential_source(
    source: &Value,
    audience: &str,
    token_type: &str,
    impersonated: Option<String>,
) -> std::result::Result<(Arc<dyn SubjectTokenSource>, String), String> {
    let Some(object) = source.as_object() else {
        return Err("field credential_source must be an object".into());
    };
    let format = match object.get("format") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            serde_json::from_value::<Format>(value.clone())
                .map_err(|e| format!("field credential_source.format: {e}"))?,
        ),
    };
    let json_field = match format {
        Some(Format {
            kind: Some(kind), ..
        }) if kind == "text" => None,
        None | Some(Format { kind: None, .. }) => None,
        Some(Format {
            kind: Some(kind),
            subject_token_field_name,
        }) if kind == "json" => Some(subject_token_field_name.filter(|f| !f.is_empty()).ok_or(
            "field credential_source.format.subject_token_field_name is required with type json",
        )?),
        Some(Format {
            kind: Some(kind), ..
        }) => {
            return Err(format!(
                "field credential_source.format.type must be text or json, not {kind:?}"
            ));
        }
    };
    if object.contains_key("environment_id") {
        return Err(
            "field credential_source.environment_id: the aws source (a SigV4-signed \
             GetCallerIdentity request) is not supported by this crate; use a file, url \
             or executable source"
                .into(),
        );
    }
    if let Some(file) = object.get("file") {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty())
            .ok_or("field credential_source.file must be a path")?;
        let describe = format!("file {file}");
        let source: Arc<dyn SubjectTokenSource> = match json_field {
            None => Arc::new(SubjectTokenFile::new(file)),
            Some(field) => Arc::new(JsonFile {
                file: SubjectTokenFile::new(file),
                path: PathBuf::from(file),
                field,
            }),
        };
        return Ok((source, describe));
    }
    if let Some(url) = object.get("url") {
        let url = url
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or("field credential_source.url must be a URL")?;
        let parsed = parse_url(url, "field credential_source.url").map_err(|e| e.to_string())?;
        let mut headers = Vec::new();
        if let Some(given) = object.get("headers") {
            let given = given
                .as_object()
                .ok_or("field credential_source.headers must be an object")?;
            for (name, value) in given {
                let value = value.as_str().ok_or_else(|| {
                    format!("field credential_source.headers.{name} must be a string")
                })?;
                headers.push((name.clone(), SecretString::from(value.to_owned())));
            }
        }
        let describe = format!("url {}", without_query(&parsed));
        let source = UrlSource {
            endpoint: TokenEndpoint::new(url.to_owned()),
            url: parsed,
            headers,
            field: json_field,
        };
        return Ok((Arc::new(source), describe));
    }
    if let Some(executable) = object.get("executable") {
        let source = Executable::parse(executable, audience, token_type, impersonated)?;
        let describe = format!("executable {}", source.program.display());
        return Ok((Arc::new(source), describe));
    }
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    Err(format!(
        "field credential_source: unknown source (it has {}); expected file, url or executable",
        if keys.is_empty() {
            "no fields".to_owned()
        } else {
            keys.join(", ")
        }
    ))
}

/// A URL's scheme, host, port and path: no query, which may carry parameters better not
/// shown.
fn without_query(url: &reqwest::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// The field `field` of a JSON text, as a subject token.
fn field_of(text: &str, field: &str, from: &str) -> Result<SecretString> {
    let problem = |problem: String| Error::SubjectToken {
        from: from.to_owned(),
        problem,
        transient: false,
    };
    let json: Value = serde_json::from_str(text).map_err(|_| {
        problem(format!(
            "not JSON ({}), though its format is json",
            describe_body(text.as_bytes())
        ))
    })?;
    match json.get(field) {
        Some(Value::String(token)) if !token.trim().is_empty() => {
            Ok(SecretString::from(token.trim().to_owned()))
        }
        _ => Err(problem(format!(
            "the field {field:?} (subject_token_field_name) is missing, empty or not a string"
        ))),
    }
}

/// A file whose JSON holds the subject token in a field; read at every exchange.
struct JsonFile {
    file: SubjectTokenFile,
    path: PathBuf,
    field: String,
}

#[async_trait::async_trait]
impl SubjectTokenSource for JsonFile {
    async fn subject_token(&self) -> Result<SecretString> {
        let text = self.file.subject_token().await?;
        field_of(
            text.expose_secret(),
            &self.field,
            &self.path.display().to_string(),
        )
    }
}

/// A URL that answers with the subject token (text, or JSON with the field); fetched at
/// every exchange.
struct UrlSource {
    endpoint: TokenEndpoint,
    url: reqwest::Url,
    headers: Vec<(String, SecretString)>,
    field: Option<String>,
}

#[async_trait::async_trait]
impl SubjectTokenSource for UrlSource {
    async fn subject_token(&self) -> Result<SecretString> {
        let from = without_query(&self.url);
        let service = format!("the credential source URL {from}");
        let plain = PlainHttp {
            hosts: LINK_LOCAL,
            allow_any: false,
            allow_with: "an https credential_source.url",
        };
        let call = Call::get(&self.endpoint, &service, self.url.clone(), plain).headers(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.expose_secret())),
        )?;
        let answer = call.send().await.map_err(|e| match e {
            Error::Cloud {
                problem, transient, ..
            } => Error::SubjectToken {
                from: from.clone(),
                problem,
                transient,
            },
            other => other,
        })?;
        if !answer.is_success() {
            let mut scrubber = Scrubber::default();
            for (_, value) in &self.headers {
                scrubber = scrubber.secret(value.expose_secret());
            }
            return Err(match answer.status_error(&service, &scrubber, &[], "") {
                Error::Cloud {
                    problem, transient, ..
                } => Error::SubjectToken {
                    from,
                    problem,
                    transient,
                },
                other => other,
            });
        }
        let text = String::from_utf8_lossy(&answer.body);
        match &self.field {
            Some(field) => field_of(&text, field, &from),
            None if text.trim().is_empty() => Err(Error::SubjectToken {
                from,
                problem: "the answer is empty".into(),
                transient: true,
            }),
            None => Ok(SecretString::from(text.trim().to_owned())),
        }
    }
}

/// A program that prints the subject token (Google's executable-sourced credentials).
struct Executable {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    output_file: Option<PathBuf>,
    env: Vec<(&'static str, String)>,
    token_type: String,
    /// The last token it printed, and when that expires (Unix seconds).
    cached: Mutex<Option<(SecretString, Option<u64>)>>,
}

/// What an executable prints (or leaves in its output file).
#[derive(Deserialize)]
struct Output {
    version: Option<u64>,
    success: Option<bool>,
    token_type: Option<String>,
    id_token: Option<String>,
    saml_response: Option<String>,
    expiration_time: Option<u64>,
    code: Option<String>,
    message: Option<String>,
}

impl Executable {
    fn parse(
        config: &Value,
        audience: &str,
        token_type: &str,
        impersonated: Option<String>,
    ) -> std::result::Result<Self, String> {
        let command = config
            .get("command")
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .ok_or("field credential_source.executable.command is missing or empty")?;
        let mut parts = command.split_whitespace();
        let program = PathBuf::from(parts.next().unwrap_or_default());
        if !program.is_absolute() {
            return Err(
                "field credential_source.executable.command must start with the program's \
                 absolute path"
                    .into(),
            );
        }
        let args = parts.map(str::to_owned).collect();
        let timeout = match config.get("timeout_millis") {
            None | Some(Value::Null) => DEFAULT_EXECUTABLE_TIMEOUT,
            Some(value) => {
                let millis = value
                    .as_u64()
                    .filter(|m| EXECUTABLE_TIMEOUT_RANGE.contains(m))
                    .ok_or_else(|| {
                        format!(
                            "field credential_source.executable.timeout_millis must be a \
                             number from {} to {}",
                            EXECUTABLE_TIMEOUT_RANGE.start(),
                            EXECUTABLE_TIMEOUT_RANGE.end()
                        )
                    })?;
                Duration::from_millis(millis)
            }
        };
        let output_file = config
            .get("output_file")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        let mut env = vec![
            ("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", audience.to_owned()),
            ("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", token_type.to_owned()),
            ("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0".to_owned()),
        ];
        if let Some(email) = impersonated {
            env.push(("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", email));
        }
        if let Some(file) = &output_file {
            env.push((
                "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE",
                file.display().to_string(),
            ));
        }
        Ok(Self {
            program,
            args,
            timeout,
            output_file,
            env,
            token_type: token_type.to_owned(),
            cached: Mutex::new(None),
        })
    }

    fn from(&self) -> String {
        format!("executable {}", self.program.display())
    }

    fn fail(&self, problem: impl Into<String>, transient: bool) -> Error {
        Error::SubjectToken {
            from: self.from(),
            problem: problem.into(),
            transient,
        }
    }

    /// A token that lives past the reuse margin, if `expiration` says so; no expiry means
    /// it may not be reused.
    fn fresh(expiration: Option<u64>) -> bool {
        expiration.is_some_and(|at| at > unix_now() + EXECUTABLE_REUSE_MARGIN.as_secs())
    }

    /// The token in an executable's output, and its expiry.
    fn read_output(&self, text: &str, what: &str) -> Result<(SecretString, Option<u64>)> {
        let output: Output = serde_json::from_str(text.trim()).map_err(|_| {
            self.fail(
                format!(
                    "its {what} is not the JSON Google's executable protocol wants ({})",
                    describe_body(text.as_bytes())
                ),
                false,
            )
        })?;
        if output.version != Some(1) {
            return Err(self.fail(format!("its {what} has no `version` 1"), false));
        }
        match output.success {
            Some(true) => {}
            Some(false) => {
                let said = |v: Option<String>| {
                    v.map(|t| Scrubber::default().text(&t))
                        .unwrap_or_else(|| "(none)".into())
                };
                return Err(self.fail(
                    format!(
                        "it reported failure: code {}, message {}",
                        said(output.code),
                        said(output.message)
                    ),
                    false,
                ));
            }
            None => return Err(self.fail(format!("its {what} has no `success`"), false)),
        }
        let kind = output.token_type.unwrap_or_default();
        if kind != self.token_type {
            return Err(self.fail(
                format!(
                    "its token_type {kind:?} is not the file's subject_token_type {:?}",
                    self.token_type
                ),
                false,
            ));
        }
        let token = if kind == SAML2 {
            output.saml_response
        } else if kind == token_types::JWT || kind == token_types::ID_TOKEN {
            output.id_token
        } else {
            return Err(self.fail(format!("its token_type {kind:?} is not supported"), false));
        };
        let token = token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| self.fail(format!("its {what} has no token"), false))?;
        if self.output_file.is_some() && output.expiration_time.is_none() {
            return Err(self.fail(
                "it has an output_file but printed no expiration_time",
                false,
            ));
        }
        if output.expiration_time.is_some_and(|at| at <= unix_now()) {
            return Err(self.fail(format!("the token in its {what} has expired"), true));
        }
        Ok((
            SecretString::from(token.trim().to_owned()),
            output.expiration_time,
        ))
    }

    async fn run(&self) -> Result<(SecretString, Option<u64>)> {
        use tokio::io::AsyncReadExt as _;
        if std::env::var(ENV_ALLOW_EXECUTABLES).ok().as_deref() != Some("1") {
            return Err(self.fail(
                format!(
                    "executables run only with {ENV_ALLOW_EXECUTABLES}=1 in the environment \
                     (a credentials file alone must not make a process run a program)"
                ),
                false,
            ));
        }
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| self.fail(format!("cannot be started: {e}"), false))?;
        let mut stdout = child.stdout.take();
        let run = async {
            let mut output = Vec::new();
            if let Some(stdout) = &mut stdout {
                stdout
                    .take(MAX_OUTPUT_BYTES as u64 + 1)
                    .read_to_end(&mut output)
                    .await?;
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, output))
        };
        let (status, output) = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(self.fail(format!("its output cannot be read: {e}"), true)),
            Err(_) => {
                // Dropping the child kills it (`kill_on_drop`).
                return Err(self.fail(
                    format!(
                        "it did not finish within {:?} (timeout_millis): it was killed",
                        self.timeout
                    ),
                    true,
                ));
            }
        };
        if !status.success() {
            return Err(self.fail(
                format!(
                    "it exited with {status} (its standard error is not shown: it may hold \
                     secrets; run it by hand)"
                ),
                false,
            ));
        }
        if output.len() > MAX_OUTPUT_BYTES {
            return Err(self.fail(
                format!("it printed more than {MAX_OUTPUT_BYTES} bytes"),
                false,
            ));
        }
        self.read_output(&String::from_utf8_lossy(&output), "output")
    }
}

#[async_trait::async_trait]
impl SubjectTokenSource for Executable {
    async fn subject_token(&self) -> Result<SecretString> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((token, expiration)) = cached
            && Self::fresh(expiration)
        {
            return Ok(token);
        }
        if let Some(file) = &self.output_file
            && let Ok(text) = read_text(file).await
            && let Ok((token, expiration)) = self.read_output(&text, "output file")
            && Self::fresh(expiration)
        {
            return Ok(token);
        }
        let (token, expiration) = self.run().await?;
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((token.clone(), expiration));
        Ok(token)
    }
}

/// Unix time now, in whole seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a small file off the runtime's threads.
async fn read_text(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
        .await
        .map_err(std::io::Error::other)?
}

#[async_trait::async_trait]
impl TokenSource for ExternalAccount {
    /// `gcp-external-account-{hash}`: STS's URL, the audience (the pool provider), the
    /// subject token type, where the subject token is read, the scopes, the client and the
    /// impersonation. The subject itself (who the workload is) is in the token, not the
    /// file: processes that share a store must share the credentials file's workload.
    fn store_key(&self) -> Option<String> {
        let key = self
            .sts
            .key_parts(KeyBuilder::new("gcp-external-account"))
            .part(&self.audience)
            .part(&self.subject_token_type)
            .part(&self.describe)
            .part(self.scopes())
            .optional(self.client.as_ref().map(|(id, _)| id))
            .optional(self.user_project.as_deref());
        let key = match &self.impersonation {
            Some(target) => target.key_parts(key.part([1])),
            None => key.part([0]),
        };
        Some(key.finish())
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        let subject = self.subject.subject_token().await?;
        let scope = match &self.impersonation {
            // The STS token only calls IAM Credentials; the scopes are the account's.
            Some(_) => CLOUD_PLATFORM_SCOPE.to_owned(),
            None => self.scopes(),
        };
        let options = match (&self.client, &self.user_project) {
            (None, Some(project)) => Some(serde_json::json!({"userProject": project}).to_string()),
            _ => None,
        };
        let mut request = self
            .sts
            .request()
            .describe(
                "the subject token",
                "an https token_url (plain http only to loopback)",
            )
            .param("grant_type", crate::TokenExchange::GRANT_TYPE)
            .param("audience", &self.audience)
            .param("scope", &scope)
            .param("requested_token_type", token_types::ACCESS_TOKEN)
            .param("subject_token_type", &self.subject_token_type)
            .secret_param("subject_token", subject.expose_secret());
        if let Some(options) = &options {
            request = request.param("options", options);
        }
        if let Some((id, secret)) = &self.client {
            request = request.basic_auth(id, secret.expose_secret());
        }
        let sts_token = request.send().await?;
        match &self.impersonation {
            None => Ok(sts_token),
            Some(target) => {
                let mut target = target.clone();
                target.scopes = self.scopes.clone();
                target.generate(&sts_token).await
            }
        }
    }
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("audience", &self.audience)
            .field("subject_token_type", &self.subject_token_type)
            .field("credential_source", &self.describe)
            .field("token_url", &self.sts.url())
            .field("service_account", &self.service_account())
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}
