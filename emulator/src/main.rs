//! `token-refresh-emulator`: the emulator as a process, for tests written in other languages
//! and for docker-compose files.
//!
//! ```text
//! token-refresh-emulator [--port 8080] [--host 127.0.0.1] [--token-ttl SECONDS]
//!                        [--public-url http://emulator:8080]
//! ```
//!
//! It prints the service account and the OAuth2 client as one JSON line on standard output
//! (the secrets included: they are test values that exist only in this process), then
//! serves until it is interrupted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use token_refresh_emulator::Emulator;

const USAGE: &str = "usage: token-refresh-emulator [--port PORT] [--host ADDR] \
[--token-ttl SECONDS] [--public-url URL]

  --port PORT         port to listen on (default 8080; 0 picks a free one)
  --host ADDR         address to listen on (default 127.0.0.1; 0.0.0.0 inside a test network)
  --token-ttl SECONDS lifetime of issued tokens (default 3600)
  --public-url URL    the URL clients reach it at (default http://HOST:PORT)";

#[derive(Debug)]
struct Options {
    port: u16,
    host: IpAddr,
    token_ttl: Duration,
    public_url: Option<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        port: 8080,
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        token_ttl: token_refresh_emulator::DEFAULT_TOKEN_TTL,
        public_url: None,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => {
                options.port = value
                    .parse()
                    .map_err(|_| format!("--port {value:?} is not a port number"))?;
            }
            "--host" => {
                options.host = value
                    .parse()
                    .map_err(|_| format!("--host {value:?} is not an IP address"))?;
            }
            "--token-ttl" => {
                let seconds: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--token-ttl {value:?} is not a positive number"))?;
                options.token_ttl = Duration::from_secs_f64(seconds);
            }
            "--public-url" => options.public_url = Some(value),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("token-refresh-emulator: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Emulator::builder()
        .bind(SocketAddr::new(options.host, options.port))
        .token_ttl(options.token_ttl);
    if let Some(url) = options.public_url {
        builder = builder.public_url(url);
    }
    let emulator = match builder.start().await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!(
                "token-refresh-emulator: cannot listen on {}:{}: {e}",
                options.host, options.port
            );
            return ExitCode::FAILURE;
        }
    };
    let account = emulator.account();
    println!(
        "{}",
        serde_json::json!({
            "origin": emulator.origin(),
            "token_url": emulator.token_url(),
            "api_url": emulator.api_url(),
            "service_account": {
                "key_id": account.key_id(),
                "email": account.email(),
                "secret": account.expose_secret(),
            },
            "client": {
                "client_id": emulator.client_id(),
                "client_secret": emulator.client_secret(),
            },
        })
    );
    match tokio::signal::ctrl_c().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token-refresh-emulator: cannot wait for Ctrl-C: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_say_why() {
        let options = parse(args(&["--port", "0", "--token-ttl", "1.5"])).unwrap();
        assert_eq!(options.port, 0);
        assert_eq!(options.token_ttl, Duration::from_millis(1500));
        assert!(
            parse(args(&["--port", "x"]))
                .unwrap_err()
                .contains("--port")
        );
        assert!(
            parse(args(&["--token-ttl", "-1"]))
                .unwrap_err()
                .contains("--token-ttl")
        );
        assert!(
            parse(args(&["--bogus", "1"]))
                .unwrap_err()
                .contains("--bogus")
        );
        assert!(
            parse(args(&["--port"]))
                .unwrap_err()
                .contains("needs a value")
        );
    }
}
