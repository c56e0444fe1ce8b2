//! `RedisStore::cluster` against a real Redis Cluster (three masters, three replicas, on
//! loopback): does a fleet of processes (the `fleet` example) share one token and one
//! refresh-token series there as on one server, and does a failover of the master that
//! holds the fleet's slot fail any call?
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisCluster;
use common::*;

/// The `fleet` example on `cluster`, with `args`.
fn fleet(cluster: &RedisCluster, args: &[&str]) -> std::process::Command {
    let mut command = example("fleet");
    command
        .args(["--cluster", &cluster.urls.join(",")])
        .args(args);
    command
}

#[test]
fn eight_processes_on_a_cold_cluster_make_one_token_request() {
    let cluster = RedisCluster::start();
    let (ok, text) = finished(&mut fleet(
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
    assert_fleet_rotates_a_series_without_a_reuse(&mut fleet(&cluster, &[]));
}

/// On a cluster too, waiting processes are woken by the store (a `PUBLISH` from the script
/// that stores the token reaches every node), not by their next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_processes_on_a_cluster_are_woken_by_the_store() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use token_refresh::store::RedisStore;
    use token_refresh::{AccessToken, TokenProvider};

    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let providers: Vec<TokenProvider> = (0..5)
        .map(|_| {
            let fetches = fetches.clone();
            TokenProvider::builder(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    AccessToken::new("woken", Duration::from_secs(3600))
                }
            })
            .store(
                RedisStore::cluster(&cluster.urls)
                    .unwrap()
                    .encryption_key([8; 32]),
            )
            .store_key("woken")
            .try_build()
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let done: Vec<Duration> = join_all(providers.iter().map(|provider| async move {
        provider.token().await.unwrap();
        started.elapsed()
    }))
    .await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch fleet-wide");
    let first = *done.iter().min().unwrap();
    let spread = done.iter().max().unwrap().saturating_sub(first);
    println!("on a cluster, the last waiter had the token {spread:?} after the first process");
    assert!(spread < Duration::from_millis(50), "{spread:?}");
    assert!(providers.iter().all(|p| p.health().store_ok == Some(true)));
}
