//! The cloud sources as the environment configures them: Application Default Credentials
//! found through `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's well-known file under a fake
//! home, `CLOUDSDK_CONFIG` and the metadata server; off-cloud detection; executables
//! allowed by `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES`; `GCE_METADATA_HOST`; Azure's
//! `IDENTITY_ENDPOINT`, `AZURE_POD_IDENTITY_AUTHORITY_HOST` and AKS's variables.
//!
//! Setting variables in a multi-threaded test process is unsound, so every case runs in a
//! child process: this binary again, with `CLOUD_ENV_CHILD` naming what to build and an
//! environment made for the case (cleared first, so the machine's own credentials never
//! leak in). The parent runs the emulator, writes the files, and checks what the child
//! printed and what the emulator counted. A binary of its own (`harness = false`): it
//! prints one line per case and `N passed, N failed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use token_refresh_emulator::{AZURE_FEDERATION_AUDIENCE, Emulator, FEDERATED_SUBJECT};

const CHILD: &str = "CLOUD_ENV_CHILD";

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(scenario) = std::env::var(CHILD) {
        runtime.block_on(child(&scenario));
        return std::process::ExitCode::SUCCESS;
    }
    let cases = cases();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in &cases {
            println!("{name}: test");
        }
        return std::process::ExitCode::SUCCESS;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let outcome = runtime.block_on(async {
            tokio::task::spawn(async move { case().await })
                .await
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(panic) => {
                println!("test {name} ... FAILED\n{panic}");
                failed += 1;
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

type Case = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("adc_finds_each_file_type_through_the_variable", || {
            Box::pin(adc_through_the_variable())
        }),
        ("adc_finds_each_file_type_at_the_well_known_path", || {
            Box::pin(adc_at_the_well_known_path())
        }),
        ("adc_falls_back_to_the_metadata_server", || {
            Box::pin(adc_falls_back_to_the_metadata_server())
        }),
        (
            "adc_off_cloud_fails_within_1500_ms_listing_what_it_tried",
            || Box::pin(adc_off_cloud()),
        ),
        ("adc_reports_a_missing_file_the_variable_names", || {
            Box::pin(adc_missing_named_file())
        }),
        ("gce_metadata_host_names_the_metadata_server", || {
            Box::pin(gce_metadata_host())
        }),
        ("an_allowed_executable_runs_once_per_token_lifetime", || {
            Box::pin(executable_success())
        }),
        (
            "a_failing_garbled_or_hung_executable_is_a_typed_error",
            || Box::pin(executable_failures()),
        ),
        ("managed_identity_follows_the_platform_variables", || {
            Box::pin(managed_identity())
        }),
        ("workload_identity_reads_the_aks_variables", || {
            Box::pin(workload_identity())
        }),
    ]
}

// ---------------------------------------------------------------- the child's side

/// Builds the source the scenario names from this process's environment, asks it for a
/// token, and prints what happened.
async fn child(scenario: &str) {
    use token_refresh::{TokenProvider, TokenSource};
    let started = Instant::now();
    let report = |result: token_refresh::Result<token_refresh::AccessToken>| match result {
        Ok(token) => println!("result=ok lifetime={}", token.lifetime().as_secs()),
        Err(error) => println!("result=error {error}"),
    };
    match scenario {
        "adc" => match token_refresh::gcp::ApplicationDefaultCredentials::new() {
            Ok(adc) => {
                println!("kind={}", adc.kind());
                report(TokenProvider::new(adc).token().await);
            }
            Err(error) => println!("result=error {error}"),
        },
        "metadata" => {
            let server = token_refresh::gcp::MetadataServer::new();
            println!("kind={}", server.url());
            report(server.fetch_token().await);
        }
        "executable" | "executable-twice" => {
            let config = std::env::var("CLOUD_ENV_CONFIG").unwrap();
            let source = token_refresh::gcp::ExternalAccount::from_file(config).unwrap();
            report(source.fetch_token().await);
            if scenario == "executable-twice" {
                report(source.fetch_token().await);
            }
        }
        "managed" => {
            let source =
                token_refresh::azure::ManagedIdentity::new("https://management.azure.com/");
            println!("kind={}", source.kind());
            report(source.fetch_token().await);
        }
        "workload" => match token_refresh::azure::WorkloadIdentity::from_env(
            "https://management.azure.com/.default",
        ) {
            Ok(source) => report(source.fetch_token().await),
            Err(error) => println!("result=error {error}"),
        },
        other => panic!("unknown scenario {other}"),
    }
    println!("elapsed_ms={}", started.elapsed().as_millis());
}

// ---------------------------------------------------------------- the parent's side

/// What a child printed.
struct Printed {
    lines: Vec<String>,
}

impl Printed {
    fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
    fn results(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("result="))
            .collect()
    }
    fn elapsed(&self) -> Duration {
        Duration::from_millis(self.value("elapsed_ms").unwrap().parse().unwrap())
    }
}

/// Runs this binary as a child for `scenario` with only `env` (and nothing of the
/// parent's environment).
async fn run_child(scenario: &str, env: &[(&str, String)]) -> Printed {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.env_clear().env(CHILD, scenario);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "child {scenario} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Printed {
        lines: stdout.lines().map(str::to_owned).collect(),
    }
}

/// A directory removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "token-refresh-env-{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        path
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The four ADC file types for `emulator`, by name, each with a file of its own in `dir`.
async fn adc_files(emulator: &Emulator, dir: &Dir) -> BTreeMap<&'static str, String> {
    let federated = emulator
        .federated_token(
            FEDERATED_SUBJECT,
            &emulator.workload_identity_audience(),
            Duration::from_secs(3600),
        )
        .await;
    let subject = dir.write("subject-token", &federated);
    let impersonated = json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url":
            emulator.impersonation_url("target@emulator.iam.gserviceaccount.com"),
        "source_credentials": emulator.authorized_user_file(),
        "delegates": [],
    });
    BTreeMap::from([
        ("service_account", emulator.google_key_file().to_string()),
        (
            "authorized_user",
            emulator.authorized_user_file().to_string(),
        ),
        (
            "external_account",
            emulator
                .external_account_file(json!({"file": subject}))
                .to_string(),
        ),
        ("impersonated_service_account", impersonated.to_string()),
    ])
}

/// What the emulator counted for each kind of credentials.
fn served(emulator: &Emulator, kind: &str) -> u64 {
    let (stats, cloud) = (emulator.stats(), emulator.cloud_stats());
    match kind {
        "service_account" => stats.token_successes - stats.refresh_token_grants,
        "authorized_user" => stats.refresh_token_grants,
        "external_account" => cloud.google_sts_exchanges,
        "impersonated_service_account" => cloud.google_iam_tokens,
        "metadata_server" => cloud.gcp_metadata_tokens,
        other => panic!("{other}"),
    }
}

/// An environment with a home that has no gcloud file, and a metadata host where
/// nothing listens (refused at once): so that only what a case adds can be found.
fn bare_env(home: &Dir) -> Vec<(&'static str, String)> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    vec![
        ("HOME", home.path()),
        ("GCE_METADATA_HOST", format!("127.0.0.1:{port}")),
    ]
}

async fn adc_through_the_variable() {
    let emulator = Emulator::start().await.unwrap();
    let dir = Dir::new("adc-var");
    let home = Dir::new("adc-var-home");
    for (kind, content) in adc_files(&emulator, &dir).await {
        let file = dir.write(&format!("{kind}.json"), &content);
        let before = served(&emulator, kind);
        let mut env = bare_env(&home);
        env.push(("GOOGLE_APPLICATION_CREDENTIALS", file.display().to_string()));
        let printed = run_child("adc", &env).await;
        assert_eq!(printed.value("kind"), Some(kind), "{:?}", printed.lines);
        assert!(
            printed.results()[0].starts_with("ok"),
            "{kind}: {:?}",
            printed.lines
        );
        assert_eq!(served(&emulator, kind), before + 1, "{kind}");
    }
}

async fn adc_at_the_well_known_path() {
    let emulator = Emulator::start().await.unwrap();
    let dir = Dir::new("adc-home");
    for (kind, content) in adc_files(&emulator, &dir).await {
        let home = Dir::new("home");
        home.write(
            ".config/gcloud/application_default_credentials.json",
            &content,
        );
        let before = served(&emulator, kind);
        let printed = run_child("adc", &bare_env(&home)).await;
        assert_eq!(printed.value("kind"), Some(kind), "{:?}", printed.lines);
        assert!(
            printed.results()[0].starts_with("ok"),
            "{kind}: {:?}",
            printed.lines
        );
        assert_eq!(served(&emulator, kind), before + 1, "{kind}");
    }
    // CLOUDSDK_CONFIG moves gcloud's directory, and the file with it.
    let config = Dir::new("cloudsdk");
    config.write(
        "application_default_credentials.json",
        &emulator.authorized_user_file().to_string(),
    );
    let home = Dir::new("home");
    let mut env = bare_env(&home);
    env.push(("CLOUDSDK_CONFIG", config.path()));
    let printed = run_child("adc", &env).await;
    assert_eq!(printed.value("kind"), Some("authorized_user"));
}

async fn adc_falls_back_to_the_metadata_server() {
    let emulator = Emulator::start().await.unwrap();
    let home = Dir::new("adc-fallback");
    let env = [
        ("HOME", home.path()),
        ("GCE_METADATA_HOST", emulator.addr().to_string()),
    ];
    let printed = run_child("adc", &env).await;
    assert_eq!(printed.value("kind"), Some("metadata_server"));
    assert!(
        printed.results()[0].starts_with("ok"),
        "{:?}",
        printed.lines
    );
    let stats = emulator.cloud_stats();
    assert_eq!(
        (stats.gcp_metadata_pings, stats.gcp_metadata_tokens),
        (1, 1)
    );
    assert_eq!(
        emulator.metadata_scopes(),
        [Some(
            "https://www.googleapis.com/auth/cloud-platform".to_owned()
        )]
    );
}

async fn adc_off_cloud() {
    // A metadata host that takes connections and never answers, and one that refuses.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let home = Dir::new("adc-off-cloud");
    let well_known =
        Path::new(&home.path()).join(".config/gcloud/application_default_credentials.json");
    for host in [silent, bare_env(&home)[1].1.clone()] {
        let env = [("HOME", home.path()), ("GCE_METADATA_HOST", host.clone())];
        let started = Instant::now();
        let printed = run_child("adc", &env).await;
        let error = printed.results()[0];
        assert!(
            error.starts_with("error no Google Application Default Credentials found"),
            "{error}"
        );
        assert!(
            error.contains("GOOGLE_APPLICATION_CREDENTIALS (not set)"),
            "{error}"
        );
        assert!(
            error.contains(&format!("{} (no such file)", well_known.display())),
            "{error}"
        );
        assert!(
            error.contains(&format!(
                "the GCP metadata server at http://{host} (from GCE_METADATA_HOST)"
            )),
            "{error}"
        );
        assert!(
            printed.elapsed() < Duration::from_millis(1500),
            "{:?} in the child, {:?} with its start",
            printed.elapsed(),
            started.elapsed()
        );
        println!(
            "    off-cloud error after {:?} ({host}): {error}",
            printed.elapsed()
        );
    }
    holder.abort();
}

async fn adc_missing_named_file() {
    let home = Dir::new("adc-missing");
    let mut env = bare_env(&home);
    env.push((
        "GOOGLE_APPLICATION_CREDENTIALS",
        "/nonexistent/creds.json".into(),
    ));
    let printed = run_child("adc", &env).await;
    let error = printed.results()[0];
    assert!(
        error.contains("/nonexistent/creds.json")
            && error.contains("named by GOOGLE_APPLICATION_CREDENTIALS"),
        "{error}"
    );
}

async fn gce_metadata_host() {
    let emulator = Emulator::start().await.unwrap();
    let printed = run_child(
        "metadata",
        &[("GCE_METADATA_HOST", emulator.addr().to_string())],
    )
    .await;
    assert_eq!(printed.value("kind"), Some(emulator.origin().as_str()));
    assert!(printed.results()[0].starts_with("ok"));
    assert_eq!(emulator.cloud_stats().gcp_metadata_tokens, 1);
}

/// An executable script in `dir` with `body`.
fn script(dir: &Dir, name: &str, body: &str) -> PathBuf {
    let path = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn executable_config(emulator: &Emulator, dir: &Dir, program: &Path, timeout_ms: u64) -> PathBuf {
    let config = emulator.external_account_file(json!({
        "executable": {"command": format!("{} --flag", program.display()), "timeout_millis": timeout_ms},
    }));
    dir.write("credentials.json", &config.to_string())
}

async fn executable_success() {
    let emulator = Emulator::start().await.unwrap();
    let dir = Dir::new("exe");
    let token = emulator
        .federated_token(FEDERATED_SUBJECT, "aud", Duration::from_secs(3600))
        .await;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let response = dir.write(
        "response.json",
        &json!({"version": 1, "success": true, "token_type": "urn:ietf:params:oauth:token-type:jwt",
                "id_token": token, "expiration_time": expiry})
        .to_string(),
    );
    let program = script(
        &dir,
        "issue-token",
        &format!(
            "echo \"$1 $GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE $GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE\" >> {runs}\ncat {response}",
            runs = dir.0.join("runs").display(),
            response = response.display()
        ),
    );
    let config = executable_config(&emulator, &dir, &program, 5000);
    let env = [
        ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1".to_owned()),
        ("CLOUD_ENV_CONFIG", config.display().to_string()),
    ];
    let printed = run_child("executable-twice", &env).await;
    assert_eq!(printed.results().len(), 2, "{:?}", printed.lines);
    assert!(
        printed.results().iter().all(|r| r.starts_with("ok")),
        "{:?}",
        printed.lines
    );
    let runs = std::fs::read_to_string(dir.0.join("runs")).unwrap();
    assert_eq!(
        runs,
        format!("--flag {} 0\n", emulator.workload_identity_audience()),
        "it ran once for two exchanges, with its arguments and Google's variables"
    );
    assert_eq!(emulator.subject_tokens(), [token.clone(), token.clone()]);

    // With an output_file that holds an unexpired answer, the program is not run at all.
    let cached = dir.write("cached.json", &std::fs::read_to_string(&response).unwrap());
    let config = emulator.external_account_file(json!({
        "executable": {"command": program.display().to_string(), "timeout_millis": 5000,
                       "output_file": cached},
    }));
    let config = dir.write("with-output-file.json", &config.to_string());
    let env = [
        ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1".to_owned()),
        ("CLOUD_ENV_CONFIG", config.display().to_string()),
    ];
    let printed = run_child("executable", &env).await;
    assert!(
        printed.results()[0].starts_with("ok"),
        "{:?}",
        printed.lines
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("runs"))
            .unwrap()
            .lines()
            .count(),
        1,
        "the output file's token was used"
    );
    assert_eq!(emulator.subject_tokens().len(), 3);
}

async fn executable_failures() {
    let emulator = Emulator::start().await.unwrap();
    let dir = Dir::new("exe-bad");
    let allow = |config: &PathBuf| {
        [
            ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1".to_owned()),
            ("CLOUD_ENV_CONFIG", config.display().to_string()),
        ]
    };
    let cases = [
        (
            "exits",
            "echo oops >&2\nexit 3",
            "exited with exit status: 3",
        ),
        ("garbage", "echo '<html>not json</html>'", "not the JSON"),
        (
            "refuses",
            "echo '{\"version\":1,\"success\":false,\"code\":\"401\",\"message\":\"denied\"}'",
            "reported failure: code 401, message denied",
        ),
    ];
    for (name, body, expected) in cases {
        let program = script(&dir, name, body);
        let config = executable_config(&emulator, &dir, &program, 5000);
        let printed = run_child("executable", &allow(&config)).await;
        let error = printed.results()[0];
        assert!(
            error.contains(&format!("executable {}", program.display())),
            "{error}"
        );
        assert!(error.contains(expected), "{name}: {error}");
        assert!(
            !error.contains("oops"),
            "standard error is not shown: {error}"
        );
    }
    // A program that hangs is killed at its timeout (5 s, the least Google allows).
    let program = script(&dir, "hangs", "exec sleep 30");
    let config = executable_config(&emulator, &dir, &program, 5000);
    let printed = run_child("executable", &allow(&config)).await;
    let error = printed.results()[0];
    assert!(error.contains("did not finish within 5s"), "{error}");
    let took = printed.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
    assert_eq!(emulator.cloud_stats().google_sts_exchanges, 0);
}

async fn managed_identity() {
    let emulator = Emulator::start().await.unwrap();
    let printed = run_child(
        "managed",
        &[
            ("IDENTITY_ENDPOINT", emulator.app_service_endpoint()),
            ("IDENTITY_HEADER", emulator.app_service_secret()),
        ],
    )
    .await;
    assert_eq!(printed.value("kind"), Some("app-service"));
    assert!(
        printed.results()[0].starts_with("ok"),
        "{:?}",
        printed.lines
    );
    let printed = run_child(
        "managed",
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.origin())],
    )
    .await;
    assert_eq!(printed.value("kind"), Some("imds"));
    assert!(
        printed.results()[0].starts_with("ok"),
        "{:?}",
        printed.lines
    );
    let stats = emulator.cloud_stats();
    assert_eq!(
        (stats.azure_app_service_tokens, stats.azure_imds_tokens),
        (1, 1)
    );
}

async fn workload_identity() {
    let emulator = Emulator::start().await.unwrap();
    let dir = Dir::new("aks-env");
    let token = emulator
        .federated_token(
            FEDERATED_SUBJECT,
            AZURE_FEDERATION_AUDIENCE,
            Duration::from_secs(3600),
        )
        .await;
    let file = dir.write("azure-identity-token", &token);
    let printed = run_child(
        "workload",
        &[
            ("AZURE_TENANT_ID", emulator.azure_tenant_id()),
            ("AZURE_CLIENT_ID", emulator.azure_client_id()),
            ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
            (
                "AZURE_AUTHORITY_HOST",
                format!("{}/", emulator.authority_host()),
            ),
        ],
    )
    .await;
    assert!(
        printed.results()[0].starts_with("ok"),
        "{:?}",
        printed.lines
    );
    assert_eq!(emulator.federated_assertions(), [token]);
}
