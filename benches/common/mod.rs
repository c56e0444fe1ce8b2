//! What the five bench targets share (`mod common;` in each; not a bench target itself).
//!
//! - **The run** ([`Bench`]): criterion with this crate's settings (1 s warm-up, 3 s
//!   measurement, 30 samples), the command line ([`Args`]), and at the end
//!   ([`Bench::finish`]) criterion's final summary, the measurements outside criterion for
//!   `--list`, and, in a measuring run, the target's ratio lines and its wall time.
//! - **The command line** ([`Args`], [`Mode`]): the bits of criterion's arguments the
//!   measurements outside criterion need. `cargo bench` passes `--bench` (measure);
//!   `cargo test --benches` does not (a smoke test: every benchmark runs once, with smaller
//!   sizes); the first positional argument is the filter. Criterion treats the filter as a
//!   regex; [`Args::matches`] understands its simple forms (substrings, `a|b`, `^`, `$`).
//! - **Runtimes**: a current-thread Tokio runtime, and a 2-worker one.
//! - **The token and the baselines**: the token every source hands out ([`TOKEN`]), a
//!   provider with its cache filled from an in-process closure ([`warm_provider`]), and the
//!   static `Authorization` header the baselines send ([`static_header`]), as a
//!   `reqwest-middleware` middleware ([`StaticHeaderMiddleware`], the baseline for
//!   `AuthMiddleware`) and as a `map_request` function ([`add_static_header`], the baseline
//!   for `AuthLayer`); the criterion function names of those four variants.
//! - **Interleaved A/B blocks** ([`paired`]): a variant and its baseline alternate in blocks
//!   (AB, BA, …); per-operation times are the medians over blocks, the ratio is the median of
//!   the per-block-pair ratios. Load drift on a shared machine then hits both sides alike.
//! - **Percentiles** ([`percentile`]) of sorted latencies.
//! - **Ratio lines** ([`Ratios`]): criterion's figures are read back from its own estimates,
//!   `<target>/criterion/<group>/<function>/new/estimates.json` (the slope, which is the
//!   `time:` figure criterion prints, or the mean where there is no slope); only estimates
//!   written by this run of this target are used. Their directory is found the way criterion
//!   finds it: `CRITERION_HOME`, then `CARGO_TARGET_DIR`, then `cargo metadata`.
//!
//! Each target uses some of these, so the rest is dead code in it.
#![allow(dead_code)]

use std::env;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::Criterion;
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderValue, Request};
use http_body_util::Full;
use reqwest_middleware::{Middleware, Next};
use token_refresh::{AccessToken, TokenProvider};
use tokio::runtime::Runtime;

/// The token every source hands out, and the static header the baselines send.
pub const TOKEN: &str = "tok";
pub const STATIC_BEARER: &str = "Bearer tok";

// Criterion function names shared by the in-process and the loopback targets: plain
// `[a-z0-9_]` names, so the estimate paths are exactly these.
pub const F_MW_STATIC: &str = "middleware_static_header";
pub const F_MW_AUTH: &str = "auth_middleware";
pub const F_TOWER_STATIC: &str = "map_request_static_header";
pub const F_TOWER_AUTH: &str = "auth_layer";

// ---------------------------------------------------------------------------------------
// The run.

/// One run of a bench target: criterion, the command line, and when the run started.
pub struct Bench {
    pub criterion: Criterion,
    pub args: Args,
    started: SystemTime,
    wall: Instant,
}

impl Bench {
    /// Parses the command line and configures criterion from it.
    pub fn start() -> Self {
        let args = Args::parse();
        let started = SystemTime::now();
        let wall = Instant::now();
        let criterion = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
            .configure_from_args();
        Self {
            criterion,
            args,
            started,
            wall,
        }
    }

    /// Ends the run: criterion's final summary; with `--list`, the ids in `custom` (the
    /// measurements outside criterion) that match the filter; in a measuring run, a heading
    /// with the target's name, the lines `ratios` writes, and the target's wall time.
    pub fn finish(self, custom: &[&str], ratios: impl FnOnce(&mut Ratios)) {
        self.criterion.final_summary();
        match self.args.mode {
            Mode::List => {
                for id in custom {
                    if self.args.matches(id) {
                        println!("{id}: benchmark");
                    }
                }
            }
            Mode::Bench => {
                println!(
                    "\n=== token-refresh: ratio lines, {} ===",
                    env!("CARGO_CRATE_NAME")
                );
                let mut lines = Ratios {
                    dir: criterion_dir(),
                    since: self.started,
                    printed: 0,
                    missing: Vec::new(),
                };
                ratios(&mut lines);
                lines.end();
                println!(
                    "\nbench binary wall time: {:.1} s",
                    self.wall.elapsed().as_secs_f64()
                );
            }
            Mode::Profile | Mode::Test => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Command line: the bits of criterion's arguments the custom measurements need.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bench,
    Test,
    List,
    Profile,
}

pub struct Args {
    pub mode: Mode,
    filter: Option<String>,
    exact: bool,
}

impl Args {
    /// Mirrors criterion's parsing: `cargo bench` passes `--bench` (measure); without it
    /// (`cargo test --benches`) every benchmark runs once; the first positional argument
    /// is the filter.
    fn parse() -> Self {
        // Criterion's options that take a value (the value is not the filter).
        const WITH_VALUE: &[&str] = &[
            "-c",
            "--color",
            "--colour",
            "-s",
            "--save-baseline",
            "-b",
            "--baseline",
            "--baseline-lenient",
            "--format",
            "--profile-time",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--plotting-backend",
            "--output-format",
        ];
        let (mut bench, mut test, mut list, mut profile, mut exact) =
            (false, false, false, false, false);
        let mut filter = None;
        let mut args = env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--test" => test = true,
                "--list" => list = true,
                "--exact" => exact = true,
                "--profile-time" => {
                    profile = true;
                    args.next();
                }
                a if WITH_VALUE.contains(&a) => {
                    args.next();
                }
                a if a.starts_with("--profile-time=") => profile = true,
                a if a.starts_with('-') => {}
                _ => {
                    if filter.is_none() {
                        filter = Some(arg);
                    }
                }
            }
        }
        let mode = if list {
            Mode::List
        } else if !bench || test {
            Mode::Test
        } else if profile {
            Mode::Profile
        } else {
            Mode::Bench
        };
        Self {
            mode,
            filter,
            exact,
        }
    }

    pub fn matches(&self, id: &str) -> bool {
        match &self.filter {
            None => true,
            Some(filter) if self.exact => id == filter,
            // Criterion's filter is a regex; this understands its simple forms: substrings,
            // alternatives `a|b`, anchors `^a`, `a$`.
            Some(filter) => filter.split('|').any(|alt| {
                let (start, alt) = alt.strip_prefix('^').map_or((false, alt), |a| (true, a));
                let (end, alt) = alt.strip_suffix('$').map_or((false, alt), |a| (true, a));
                match (start, end) {
                    (true, true) => id == alt,
                    (true, false) => id.starts_with(alt),
                    (false, true) => id.ends_with(alt),
                    (false, false) => id.contains(alt),
                }
            }),
        }
    }

    /// Whether the measurement `id`, one outside criterion, runs: it matches the filter, in
    /// a measuring run or the smoke test (not with `--list` or `--profile-time`).
    pub fn measures(&self, id: &str) -> bool {
        self.matches(id) && matches!(self.mode, Mode::Bench | Mode::Test)
    }
}

// ---------------------------------------------------------------------------------------
// Runtimes, the token, and the baselines.

pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread Tokio runtime")
}

pub fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a 2-worker Tokio runtime")
}

pub fn static_header() -> HeaderValue {
    let mut value = HeaderValue::from_static(STATIC_BEARER);
    value.set_sensitive(true);
    value
}

/// A provider whose source is an in-process closure, with its cache filled.
pub fn warm_provider(rt: &Runtime) -> TokenProvider {
    let provider =
        TokenProvider::new(|| async { AccessToken::new(TOKEN, Duration::from_secs(3600)) });
    rt.block_on(provider.token())
        .expect("the in-process source always returns a token");
    provider
}

/// A source whose tokens name the scope they were asked for: what a keyed provider's
/// benchmarks serve their keys from.
#[derive(Debug)]
pub struct ByScope;

#[token_refresh::async_trait]
impl token_refresh::TokenSource for ByScope {
    async fn fetch_token(&self) -> token_refresh::Result<AccessToken> {
        AccessToken::new(TOKEN, Duration::from_secs(3600))
    }
    async fn fetch_token_for(
        &self,
        params: &token_refresh::TokenParams,
    ) -> token_refresh::Result<AccessToken> {
        let scope = params.scope_string().unwrap_or_default();
        AccessToken::new(format!("{TOKEN}-{scope}"), Duration::from_secs(3600))
    }
}

/// A keyed provider with `keys` warm keys (`scope-0` …), and the params of one of them.
pub fn warm_keyed(
    rt: &Runtime,
    keys: usize,
) -> (
    token_refresh::KeyedTokenProvider,
    token_refresh::TokenParams,
) {
    let keyed = token_refresh::KeyedTokenProvider::new(ByScope);
    let params: Vec<_> = (0..keys)
        .map(|n| token_refresh::TokenParams::scope(format!("scope-{n}")))
        .collect();
    for p in &params {
        rt.block_on(keyed.token_for(p))
            .expect("the in-process source always returns a token");
    }
    let one = params[keys / 2].clone();
    (keyed, one)
}

/// A `reqwest-middleware` middleware that inserts a static header: the baseline for
/// `AuthMiddleware`.
pub struct StaticHeaderMiddleware(pub HeaderValue);

#[async_trait]
impl Middleware for StaticHeaderMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        req.headers_mut().insert(AUTHORIZATION, self.0.clone());
        next.run(req, extensions).await
    }
}

/// The `map_request` baseline for `AuthLayer`.
pub fn add_static_header(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    request.headers_mut().insert(AUTHORIZATION, static_header());
    request
}

pub type MapFn = fn(Request<Full<Bytes>>) -> Request<Full<Bytes>>;

// ---------------------------------------------------------------------------------------
// Interleaved A/B blocks and percentiles.

/// A variant against its baseline in alternating blocks (AB, BA, AB, …) so drift in the
/// machine's load hits both alike. `run(is_variant, n)` times `n` operations of one side.
/// Per-operation times are the medians over blocks; `ratio` is the median of the
/// per-block-pair ratios `base / variant` (a throughput ratio).
pub fn paired(blocks: usize, per_block: u64, mut run: impl FnMut(bool, u64) -> Duration) -> Paired {
    let mut base_ns = Vec::with_capacity(blocks);
    let mut variant_ns = Vec::with_capacity(blocks);
    let mut ratios = Vec::with_capacity(blocks);
    let per_op = |took: Duration| took.as_secs_f64() * 1e9 / per_block as f64;
    for block in 0..blocks {
        let (b, v) = if block % 2 == 0 {
            let b = run(false, per_block);
            (b, run(true, per_block))
        } else {
            let v = run(true, per_block);
            (run(false, per_block), v)
        };
        base_ns.push(per_op(b));
        variant_ns.push(per_op(v));
        ratios.push(b.as_secs_f64() / v.as_secs_f64());
    }
    Paired {
        label: "",
        has_goal: false,
        blocks,
        per_block,
        base_ns: median(&mut base_ns),
        variant_ns: median(&mut variant_ns),
        ratio: median(&mut ratios),
    }
}

/// The outcome of [`paired`].
pub struct Paired {
    pub label: &'static str,
    pub has_goal: bool,
    pub blocks: usize,
    pub per_block: u64,
    pub base_ns: f64,
    pub variant_ns: f64,
    pub ratio: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// Ratio lines.

/// The ratio lines of a measuring run: criterion's estimates from this run, and what had
/// none.
pub struct Ratios {
    dir: PathBuf,
    since: SystemTime,
    printed: usize,
    missing: Vec<&'static str>,
}

impl Ratios {
    /// Criterion's estimate in ns for `group/function`, if this run wrote it.
    pub fn estimate(&self, group: &str, function: &str) -> Option<f64> {
        estimate_ns(&self.dir, group, function, self.since)
    }

    /// Prints one ratio line.
    pub fn line(&mut self, line: impl Display) {
        println!("{line}");
        self.printed += 1;
    }

    /// Notes a figure this run has no estimate for.
    pub fn missing(&mut self, what: &'static str) {
        self.missing.push(what);
    }

    fn end(mut self) {
        self.missing.dedup();
        if !self.missing.is_empty() {
            println!(
                "(no estimate from this run for: {}; filtered out or not saved)",
                self.missing.join(", ")
            );
        } else if self.printed == 0 {
            println!("(nothing measured: filtered out)");
        }
    }
}

/// Where criterion writes its estimates, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(target) = env::var_os("CARGO_TARGET_DIR") {
        return manifest.join(target).join("criterion");
    }
    if let Some(cargo) = env::var_os("CARGO")
        && let Ok(output) = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(manifest)
            .output()
        && output.status.success()
        && let Ok(metadata) = serde_json::from_slice::<serde_json::Value>(&output.stdout)
        && let Some(target) = metadata["target_directory"].as_str()
    {
        return PathBuf::from(target).join("criterion");
    }
    manifest.join("target").join("criterion")
}

/// Criterion's estimate in ns for `group/function`, if this run wrote it: the slope (what
/// criterion prints as `time:` when it samples linearly, as it does here) or else the mean.
fn estimate_ns(dir: &Path, group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    // A little slack for coarse file-system timestamps.
    if modified + Duration::from_secs(1) < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}

pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

pub fn fmt_dur(d: Duration) -> String {
    fmt_ns(d.as_secs_f64() * 1e9)
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
