//! A fleet of worker processes sharing one token through Redis: the built-in emulator issues
//! the tokens, `--workers N` separate processes of this example each start `--callers`
//! concurrent callers at the same instant on a cold fleet, and the emulator's count of token
//! requests is printed at the end (one per token lifetime, however many workers).
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! cargo run --example fleet --features redis -- --workers 8 --redis redis://127.0.0.1:6379/
//! ```
//!
//! `--cluster redis://127.0.0.1:7000,redis://127.0.0.1:7001` runs the fleet on a Redis
//! Cluster instead (any of its nodes; `RedisStore::cluster`).
//!
//! `--grant refresh` makes the workers share a refresh-token series instead (the
//! emulator rotates refresh tokens and revokes a series whose refresh token is spent
//! twice), and `--no-store` shows what happens to such a series without the store.
//!
//! Entries are sealed with a key this run makes up and hands to its workers in
//! `TOKEN_REFRESH_STORE_KEY` (a list, `current,previous`, while a fleet rolls to a new key).
//! `--worker` runs one worker against a given `--token-url` (the account in the
//! `DT_SERVICE_ACCOUNT_*` variables); the tests use it alone. A worker prints how long its
//! callers waited for their first token (`first token after: N ms`).

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use token_refresh::store::RedisStore;
use token_refresh::{JwtBearer, OAuthClient, RefreshToken, ServiceAccount, TokenProvider};
use token_refresh_emulator::Emulator;

const USAGE: &str = "usage: fleet (--redis URL | --cluster URL,URL,...) [--workers N] [--callers C]
             [--seconds S] [--ttl S] [--grant jwt-bearer|refresh] [--no-store]
       fleet --worker (--redis URL | --cluster URLS) --token-url URL [--callers C]
             [--seconds S] [--start-at-ms T] [--prefix P] [--lease-ttl-ms L] [--grant G]
             [--no-store]

Starts the emulator and N worker processes (default 8) that share tokens through Redis (one
server, or a Redis Cluster given by some of its nodes); each
worker starts C concurrent callers (default 100), then calls for S seconds more (default 0).
Prints `token requests: N`, as the emulator counted them. --ttl sets the emulator's token
lifetime (default 3600 s). --grant refresh shares a refresh-token series (the refresh token
and the client in TOKEN_REFRESH_REFRESH_TOKEN, TOKEN_REFRESH_CLIENT_ID and
TOKEN_REFRESH_CLIENT_SECRET for --worker) and also prints the refresh grants, invalid_grant
answers and reuse detections; --no-store runs the workers without Redis.";

const KEY_VAR: &str = "TOKEN_REFRESH_STORE_KEY";
const REFRESH_TOKEN_VAR: &str = "TOKEN_REFRESH_REFRESH_TOKEN";
const CLIENT_ID_VAR: &str = "TOKEN_REFRESH_CLIENT_ID";
const CLIENT_SECRET_VAR: &str = "TOKEN_REFRESH_CLIENT_SECRET";

#[derive(Clone, Debug)]
struct Args {
    worker: bool,
    redis: String,
    cluster: Vec<String>,
    workers: usize,
    callers: usize,
    seconds: f64,
    ttl: u64,
    token_url: Option<String>,
    start_at_ms: Option<u64>,
    prefix: Option<String>,
    lease_ttl_ms: Option<u64>,
    refresh: bool,
    no_store: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        worker: false,
        redis: String::new(),
        cluster: Vec::new(),
        workers: 8,
        callers: 100,
        seconds: 0.0,
        ttl: 3600,
        token_url: None,
        start_at_ms: None,
        prefix: None,
        lease_ttl_ms: None,
        refresh: false,
        no_store: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--worker" || flag == "--no-store" {
            args.worker |= flag == "--worker";
            args.no_store |= flag == "--no-store";
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--redis" => args.redis = value.clone(),
            "--cluster" => {
                args.cluster = value
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--workers" => args.workers = number()? as usize,
            "--callers" => args.callers = number()?.max(1) as usize,
            "--seconds" => {
                args.seconds = value.parse().map_err(|_| format!("{flag}: not a number"))?
            }
            "--ttl" => args.ttl = number()?,
            "--token-url" => args.token_url = Some(value.clone()),
            "--start-at-ms" => args.start_at_ms = Some(number()?),
            "--prefix" => args.prefix = Some(value.clone()),
            "--lease-ttl-ms" => args.lease_ttl_ms = Some(number()?),
            "--grant" => match value.as_str() {
                "refresh" => args.refresh = true,
                "jwt-bearer" => args.refresh = false,
                other => return Err(format!("--grant: unknown grant {other}")),
            },
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if args.redis.is_empty() == args.cluster.is_empty() {
        return Err("give --redis URL or --cluster URL,URL,... (one of them)".into());
    }
    Ok(args)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

async fn worker(args: Args) -> Result<(), String> {
    let token_url = args.token_url.clone().ok_or("--worker needs --token-url")?;
    let mut builder = if args.refresh {
        let var = |name| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let client = OAuthClient::new(var(CLIENT_ID_VAR)?, var(CLIENT_SECRET_VAR)?);
        TokenProvider::builder(RefreshToken::new(
            token_url,
            client,
            var(REFRESH_TOKEN_VAR)?,
        ))
    } else {
        let account = ServiceAccount::from_env().map_err(|e| e.to_string())?;
        TokenProvider::builder(JwtBearer::new(account).token_url(token_url))
    };
    if !args.no_store {
        let store = if args.cluster.is_empty() {
            RedisStore::new(&args.redis)
        } else {
            RedisStore::cluster(&args.cluster)
        };
        let mut store = store
            .and_then(|s| s.encryption_keys_from_env(KEY_VAR))
            .map_err(|e| e.to_string())?;
        if let Some(prefix) = &args.prefix {
            store = store.key_prefix(prefix.clone());
        }
        builder = builder.store(store);
    }
    if let Some(ms) = args.lease_ttl_ms {
        builder = builder.store_timeouts(
            Duration::from_millis(ms),
            token_refresh::defaults::DEFAULT_STORE_TIMEOUT,
        );
    }
    let provider = builder.try_build().map_err(|e| e.to_string())?;
    if let Some(at) = args.start_at_ms {
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await;
    }
    let started = tokio::time::Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..args.callers {
        let provider = provider.clone();
        callers.spawn(async move { provider.token().await.map(|t| t.expose_secret().len()) });
    }
    let mut first_token = None;
    while let Some(result) = callers.join_next().await {
        result
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        first_token.get_or_insert_with(|| started.elapsed());
    }
    if let Some(took) = first_token {
        println!("first token after: {} ms", took.as_millis());
    }
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut calls = args.callers;
    while tokio::time::Instant::now() < end {
        provider.token().await.map_err(|e| e.to_string())?;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("worker {}: ok, {calls} calls", std::process::id());
    Ok(())
}

async fn fleet(args: Args) -> Result<(), String> {
    let emulator = Emulator::builder()
        .token_ttl(Duration::from_secs(args.ttl))
        .start()
        .await
        .map_err(|e| format!("cannot start the emulator: {e}"))?;
    let account = emulator.account();
    let key: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let prefix = format!("token-refresh-fleet-{}:", std::process::id());
    // Every worker starts its callers at this instant: a cold fleet, all at once.
    let start_at = unix_ms() + 1_500;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let refresh_token = emulator.issue_refresh_token();
    let mut children = Vec::new();
    for _ in 0..args.workers {
        let mut command = Command::new(&exe);
        if args.refresh {
            command.args(["--grant", "refresh"]);
        }
        if args.no_store {
            command.arg("--no-store");
        }
        if args.cluster.is_empty() {
            command.args(["--redis", &args.redis]);
        } else {
            command.args(["--cluster", &args.cluster.join(",")]);
        }
        let child = command
            .args(["--worker", "--token-url", &emulator.token_url()])
            .args(["--callers", &args.callers.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--start-at-ms", &start_at.to_string(), "--prefix", &prefix])
            .env("DT_SERVICE_ACCOUNT_KEY_ID", account.key_id())
            .env("DT_SERVICE_ACCOUNT_EMAIL", account.email())
            .env("DT_SERVICE_ACCOUNT_SECRET", account.expose_secret())
            .env(KEY_VAR, &key)
            .env(REFRESH_TOKEN_VAR, &refresh_token)
            .env(CLIENT_ID_VAR, emulator.client_id())
            .env(CLIENT_SECRET_VAR, emulator.client_secret())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        children.push(child);
    }
    let mut failed = 0;
    for mut child in children {
        // The workers run on their own; wait for them off the emulator's runtime.
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !status.success() {
            failed += 1;
        }
    }
    let stats = emulator.stats();
    println!("workers: {}, failed: {failed}", args.workers);
    println!("token requests: {}", stats.token_successes);
    if args.refresh {
        println!("refresh grants: {}", stats.refresh_token_grants);
        println!("invalid_grant: {}", stats.invalid_grants);
        println!("reuse detections: {}", stats.refresh_token_reuses);
    }
    if failed > 0 {
        return Err(format!("{failed} workers failed"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match parse() {
        Ok(args) if args.worker => worker(args).await,
        Ok(args) => fleet(args).await,
        Err(message) => Err(format!("{message}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fleet: {message}");
            ExitCode::FAILURE
        }
    }
}
