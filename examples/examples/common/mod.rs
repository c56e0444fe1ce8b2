//! What the examples share: DT credentials when they are set, the built-in emulator when
//! nothing is set, and an error — never a silent fallback — when credentials are set but
//! broken.
#![allow(dead_code)]

use std::time::Duration;

use token_refresh::{Error, ServiceAccount, dt};
use token_refresh_emulator::Emulator;

/// Where an example gets its tokens and sends its calls. Keep it alive: the emulator, if
/// one is used, stops when it is dropped.
pub struct Setup {
    pub account: ServiceAccount,
    pub api_url: String,
    pub emulator: Option<Emulator>,
}

/// Credentials from `DT_CREDENTIALS_FILE` or the `DT_SERVICE_ACCOUNT_*` variables, with
/// `api_url` (default: DT's API). With nothing set, the built-in emulator serves both the
/// tokens (living `ttl`) and the API, and a banner says so; that needs no `api_url`, since
/// the emulator's tokens are good for nothing else. Credentials that are set but broken
/// are an error naming the problem.
pub async fn setup(api_url: Option<String>, ttl: Duration) -> Result<Setup, String> {
    match ServiceAccount::discover() {
        Ok(account) => Ok(Setup {
            account,
            api_url: api_url.unwrap_or_else(|| dt::API_URL.to_owned()),
            emulator: None,
        }),
        Err(Error::NoCredentials) => {
            if let Some(url) = api_url {
                return Err(format!(
                    "--api-url {url} needs credentials: set DT_CREDENTIALS_FILE, or \
                     DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and \
                     DT_SERVICE_ACCOUNT_EMAIL (without them, and without --api-url, the \
                     built-in emulator serves both the tokens and the API)"
                ));
            }
            let emulator = Emulator::builder()
                .token_ttl(ttl)
                .start()
                .await
                .map_err(|e| format!("cannot start the emulator: {e}"))?;
            println!(
                "No DT credentials set: using the built-in emulator at {} with {}s tokens.",
                emulator.api_url(),
                ttl.as_secs()
            );
            Ok(Setup {
                account: emulator.account(),
                api_url: emulator.api_url(),
                emulator: Some(emulator),
            })
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Whether the command line asks for help; prints `usage` to stdout if so.
pub fn help_asked(usage: &str) -> bool {
    let asked = std::env::args()
        .skip(1)
        .any(|arg| arg == "-h" || arg == "--help");
    if asked {
        println!("{usage}");
    }
    asked
}

/// The start every example shares: `--help` (usage on stdout, exit 0), then the arguments
/// (`parse`; an error prints it with the usage, exit 2), then [`setup`] with the `--api-url`
/// the arguments name (an error prints it, exit 1).
pub async fn start<A>(
    name: &str,
    usage: &str,
    ttl: Duration,
    parse: impl FnOnce() -> Result<A, String>,
    api_url: impl FnOnce(&A) -> Option<String>,
) -> Result<(A, Setup), std::process::ExitCode> {
    if help_asked(usage) {
        return Err(std::process::ExitCode::SUCCESS);
    }
    let args = parse().map_err(|message| {
        eprintln!("{message}\n\n{usage}");
        std::process::ExitCode::from(2)
    })?;
    let setup = setup(api_url(&args), ttl).await.map_err(|error| {
        eprintln!("{name}: {error}");
        std::process::ExitCode::FAILURE
    })?;
    Ok((args, setup))
}

/// The arguments of an example that takes only `--api-url URL`.
pub fn api_url_only() -> Result<Option<String>, String> {
    match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => Ok(None),
        [flag, url] if flag == "--api-url" => Ok(Some(url.clone())),
        other => Err(format!("unexpected arguments {other:?}")),
    }
}
