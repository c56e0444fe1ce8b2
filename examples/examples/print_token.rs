//! Prints one access token for the discovered credentials, for use with curl. Fetch it
//! first, so that a failure stops before curl runs:
//!
//! ```text
//! token=$(cargo run -q --example print_token) &&
//!     curl -H "Authorization: Bearer $token" https://api.disruptive-technologies.com/v2/projects
//! ```
//!
//! Credentials come from `DT_CREDENTIALS_FILE` or the `DT_SERVICE_ACCOUNT_*` variables; there
//! is no emulator fallback (a token of it is good for nothing outside this process). Errors
//! go to stderr with a non-zero exit status.
//!
//! With `--store-dir DIR` the token is kept in `DIR` (a `FileStore`) and reused by the next
//! runs until it nears expiry: run it a hundred times in a row and it asks for one token.
//! Entries are sealed with the 32-byte key in `TOKEN_REFRESH_STORE_KEY` (64 hex digits or
//! base64) if it is set, and kept in 0600 files in the clear otherwise.

use std::process::ExitCode;

use token_refresh::store::FileStore;
use token_refresh::{JwtBearer, ServiceAccount, TokenProvider};

const USAGE: &str = "usage: print_token [--store-dir DIR]

Prints one access token for DT_CREDENTIALS_FILE, or DT_SERVICE_ACCOUNT_KEY_ID,
DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL.

  --store-dir DIR  keep the token in DIR and reuse it in later runs; sealed with
                   TOKEN_REFRESH_STORE_KEY (32 bytes, hex or base64) when set";

const STORE_KEY_VAR: &str = "TOKEN_REFRESH_STORE_KEY";

fn store_dir() -> Result<Option<String>, String> {
    match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => Ok(None),
        [flag, dir] if flag == "--store-dir" => Ok(Some(dir.clone())),
        other => Err(format!("unexpected arguments {other:?}\n\n{USAGE}")),
    }
}

fn provider(store_dir: Option<String>) -> token_refresh::Result<TokenProvider> {
    let source = JwtBearer::new(ServiceAccount::discover()?);
    let Some(dir) = store_dir else {
        return Ok(TokenProvider::new(source));
    };
    let store = match std::env::var_os(STORE_KEY_VAR) {
        Some(_) => FileStore::new(dir).encryption_key_from_env(STORE_KEY_VAR)?,
        None => FileStore::new(dir).allow_plaintext(true),
    };
    TokenProvider::builder(source).store(store).try_build()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-h" || arg == "--help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let store_dir = match store_dir() {
        Ok(dir) => dir,
        Err(message) => {
            eprintln!("print_token: {message}");
            return ExitCode::FAILURE;
        }
    };
    let token = match provider(store_dir) {
        Ok(provider) => provider.token().await,
        Err(e) => Err(e),
    };
    match token {
        Ok(token) => {
            println!("{}", token.expose_secret());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("print_token: {e}");
            ExitCode::FAILURE
        }
    }
}
