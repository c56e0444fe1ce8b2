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

use std::process::ExitCode;

use token_refresh::TokenProvider;

const USAGE: &str = "usage: print_token

Prints one access token for DT_CREDENTIALS_FILE, or DT_SERVICE_ACCOUNT_KEY_ID,
DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-h" || arg == "--help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let token = match TokenProvider::discover() {
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
