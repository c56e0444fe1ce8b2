//! Prints one access token for the discovered credentials, for use with curl:
//!
//! ```text
//! curl -H "Authorization: Bearer $(cargo run -q --example print_token)" \
//!     https://api.disruptive-technologies.com/v2/projects
//! ```
//!
//! Credentials come from `DT_CREDENTIALS_FILE` or the `DT_SERVICE_ACCOUNT_*` variables.
//! Errors go to stderr with a non-zero exit status.

use std::process::ExitCode;

use token_refresh::TokenProvider;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
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
