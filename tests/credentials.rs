//! Service account discovery: variables, files, and their errors.

use std::io::Write;
use std::sync::Mutex;

use token_refresh::{Error, ServiceAccount};

/// The environment is process-wide: tests that change it take turns.
static ENV: Mutex<()> = Mutex::new(());

const VARS: [&str; 4] = [
    "DT_CREDENTIALS_FILE",
    "DT_SERVICE_ACCOUNT_KEY_ID",
    "DT_SERVICE_ACCOUNT_SECRET",
    "DT_SERVICE_ACCOUNT_EMAIL",
];

fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // Edition 2024 makes changing the environment `unsafe` because another thread may read it
    // at the same time; every test of this binary that touches it holds ENV.
    for var in VARS {
        unsafe { std::env::remove_var(var) };
    }
    for (k, v) in vars {
        unsafe { std::env::set_var(k, v) };
    }
    let out = f();
    for var in VARS {
        unsafe { std::env::remove_var(var) };
    }
    out
}

fn temp_file(content: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(content)
}

/// A file removed on drop, without pulling in a crate for it.
mod tempfile_path {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn new(content: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "token-refresh-test-{}-{}.json",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(content.as_bytes())
                .unwrap();
            Self(path)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const FILE: &str = r#"{"serviceAccount": {"keyId": "file-kid", "secret": "file-secret",
  "email": "file@sa.example.com", "algorithm": "HS256",
  "tokenEndpoint": "https://identity.example.com/oauth2/token"}}"#;

#[test]
fn from_env_reads_the_three_variables() {
    let account = with_env(
        &[
            ("DT_SERVICE_ACCOUNT_KEY_ID", "kid"),
            ("DT_SERVICE_ACCOUNT_SECRET", "env-secret"),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::from_env,
    )
    .unwrap();
    assert_eq!(account.key_id(), "kid");
    assert_eq!(account.email(), "env@sa.example.com");
    assert_eq!(account.expose_secret(), "env-secret");
    assert_eq!(account.token_url(), None);
}

#[test]
fn empty_variable_is_named() {
    let e = with_env(
        &[
            ("DT_SERVICE_ACCOUNT_KEY_ID", "kid"),
            ("DT_SERVICE_ACCOUNT_SECRET", "  "),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::from_env,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::MissingEnvVars { names } if names == &["DT_SERVICE_ACCOUNT_SECRET"]),
        "{e:?}"
    );
    assert!(e.to_string().contains("DT_SERVICE_ACCOUNT_SECRET"));
}

#[test]
fn every_missing_variable_is_named_at_once() {
    let e = with_env(
        &[("DT_SERVICE_ACCOUNT_KEY_ID", "kid")],
        ServiceAccount::discover,
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::MissingEnvVars { names }
                if names == &["DT_SERVICE_ACCOUNT_SECRET", "DT_SERVICE_ACCOUNT_EMAIL"]
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("DT_SERVICE_ACCOUNT_SECRET, DT_SERVICE_ACCOUNT_EMAIL"),
        "{text}"
    );
}

#[test]
fn missing_variable_is_named() {
    let e = with_env(
        &[
            ("DT_SERVICE_ACCOUNT_SECRET", "s"),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::discover,
    )
    .unwrap_err();
    assert!(e.to_string().contains("DT_SERVICE_ACCOUNT_KEY_ID"), "{e}");
}

#[test]
fn nothing_set_is_no_credentials() {
    let e = with_env(&[], ServiceAccount::discover).unwrap_err();
    assert!(matches!(e, Error::NoCredentials), "{e:?}");
    assert!(e.to_string().contains("DT_CREDENTIALS_FILE"));
}

#[test]
fn file_beats_variables() {
    let file = temp_file(FILE);
    let account = with_env(
        &[
            ("DT_CREDENTIALS_FILE", file.as_str()),
            ("DT_SERVICE_ACCOUNT_KEY_ID", "env-kid"),
            ("DT_SERVICE_ACCOUNT_SECRET", "env-secret"),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::discover,
    )
    .unwrap();
    assert_eq!(account.key_id(), "file-kid");
    assert_eq!(account.expose_secret(), "file-secret");
    assert_eq!(
        account.token_url(),
        Some("https://identity.example.com/oauth2/token")
    );
}

#[test]
fn variables_are_used_without_a_file() {
    let account = with_env(
        &[
            ("DT_SERVICE_ACCOUNT_KEY_ID", "env-kid"),
            ("DT_SERVICE_ACCOUNT_SECRET", "env-secret"),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::discover,
    )
    .unwrap();
    assert_eq!(account.key_id(), "env-kid");
}

fn file_error(content: &str) -> Error {
    let file = temp_file(content);
    ServiceAccount::from_file(&file.0).unwrap_err()
}

#[test]
fn bad_file_content_names_the_field() {
    let cases = [
        (
            r#"{"serviceAccount": {"secret": "s", "email": "e"}}"#,
            "serviceAccount.keyId",
        ),
        (
            r#"{"serviceAccount": {"keyId": "k", "secret": "", "email": "e"}}"#,
            "serviceAccount.secret",
        ),
        (
            r#"{"serviceAccount": {"keyId": "k", "secret": "s"}}"#,
            "serviceAccount.email",
        ),
        (
            r#"{"serviceAccount": {"keyId": 7, "secret": "s", "email": "e"}}"#,
            "serviceAccount.keyId",
        ),
        (r#"{"account": {}}"#, "serviceAccount"),
        (r#"{"serviceAccount": []}"#, "serviceAccount"),
    ];
    for (content, field) in cases {
        let e = file_error(content);
        assert!(matches!(e, Error::CredentialsFile { .. }), "{e:?}");
        assert!(e.to_string().contains(field), "{content}: {e}");
    }
}

#[test]
fn invalid_json_and_unreadable_files_are_clear() {
    let e = file_error("{not json");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let e = ServiceAccount::from_file("/nonexistent/creds.json").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/creds.json"), "{e}");
}

#[test]
fn only_hs256_is_supported() {
    let e = file_error(
        r#"{"serviceAccount": {"keyId": "k", "secret": "s", "email": "e", "algorithm": "RS256"}}"#,
    );
    assert!(
        matches!(&e, Error::UnsupportedAlgorithm(a) if a == "RS256"),
        "{e:?}"
    );
}

#[test]
fn a_broken_file_is_an_error_not_a_fallback() {
    let file = temp_file("[]");
    let e = with_env(
        &[
            ("DT_CREDENTIALS_FILE", file.as_str()),
            ("DT_SERVICE_ACCOUNT_KEY_ID", "env-kid"),
            ("DT_SERVICE_ACCOUNT_SECRET", "env-secret"),
            ("DT_SERVICE_ACCOUNT_EMAIL", "env@sa.example.com"),
        ],
        ServiceAccount::discover,
    )
    .unwrap_err();
    assert!(matches!(e, Error::CredentialsFile { .. }), "{e:?}");
}
