//! `RedisStore::cluster` against a real Redis Cluster (three masters, three replicas, on
//! loopback): does a fleet of processes (the `fleet` example) share one token and one
//! refresh-token series there as on one server, and does a failover of the master that
//! holds the fleet's slot fail any call?
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisCluster;
use common::*;

/// Runs the `fleet` example on `cluster`: whether it succeeded, and its output.
fn fleet(cluster: &RedisCluster, args: &[&str]) -> std::process::Command {
    let mut command = example("fleet");
    command
        .args(["--cluster", &cluster.urls.join(",")])
        .args(args);
    command
}

fn output(command: &mut std::process::Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The number the fleet printed after `label`.
fn printed(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn eight_processes_on_a_cold_cluster_make_one_token_request() {
    let cluster = RedisCluster::start();
    let (ok, text) = output(&mut fleet(
        &cluster,
        &["--workers", "8", "--callers", "100"],
    ));
    println!("{text}");
    assert!(ok, "{text}");
    let requests = printed(&text, "token requests: ");
    println!("8 processes x 100 callers on a cold Redis Cluster: {requests} token requests");
    assert_eq!(requests, 1);
}

#[test]
fn a_failover_of_the_master_that_holds_the_slot_fails_no_call() {
    let cluster = RedisCluster::start();
    // 2 s tokens, refreshed every 1.6 s, for 8 s of calls: six lifetimes or so.
    let mut run = fleet(
        &cluster,
        &[
            "--workers",
            "4",
            "--callers",
            "10",
            "--ttl",
            "2",
            "--seconds",
            "8",
        ],
    );
    let child = run
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The fleet's entry, once the first worker stored it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let keys = cluster.keys("token-refresh-fleet-*");
        if let Some(entry) = keys.into_iter().find(|k| !k.ends_with(":lease")) {
            break entry;
        }
        assert!(Instant::now() < deadline, "the fleet stored no token");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let (old, new) = cluster.failover(&entry);
    println!(
        "failover of {entry}'s master {old} to {new} took {:?}",
        started.elapsed()
    );
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "a worker's call failed: {text}");
    assert_eq!(printed(&text, "workers: 4, failed: "), 0, "{text}");
    let requests = printed(&text, "token requests: ");
    // Lifetimes start at 0, 1.6, 3.2, 4.8, 6.4 and 8.0 s (plus the start-up): about
    // seven; a lifetime that starts while the slot moves may cost each process one.
    println!("4 processes, 8 s of 2 s tokens, a failover mid-run: {requests} token requests");
    assert!(requests <= 7 + 4, "{requests} token requests");
}

#[test]
fn eight_processes_sharing_a_refresh_token_series_on_a_cluster_rotate_it_without_a_reuse() {
    let cluster = RedisCluster::start();
    let (ok, text) = output(&mut fleet(
        &cluster,
        &[
            "--grant",
            "refresh",
            "--workers",
            "8",
            "--callers",
            "10",
            "--ttl",
            "1",
            "--seconds",
            "18",
        ],
    ));
    println!("{text}");
    assert!(ok, "a worker failed: {text}");
    assert!(printed(&text, "refresh grants: ") >= 20, "{text}");
    assert_eq!(printed(&text, "invalid_grant: "), 0, "{text}");
    assert_eq!(printed(&text, "reuse detections: "), 0, "{text}");
}
