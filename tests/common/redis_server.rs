#![allow(dead_code)]
//! Real Redis for the tests, from one place: a standalone server (a `redis-server` started
//! here on a free loopback port with no persistence) and a Redis Cluster of three masters and three
//! replicas (six `redis-server --cluster-enabled yes` on free ports, joined by
//! `redis-cli --cluster create`). Both are killed when dropped. Without `redis-server` (or
//! `redis-cli`) they fail saying how to install it: a Redis test is never skipped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to do when a Redis program is missing.
const INSTALL: &str = "install Redis with `apt-get install -y redis-server` (Debian, Ubuntu; \
    it brings redis-cli), `brew install redis` (macOS) or your system's package; the \
    README's test command, `scripts/test`, installs it where apt is available";

/// How many times a server (or a cluster) is started on fresh ports when a node exits at
/// start: another program on this machine may have bound a port between the choice and
/// redis-server's own bind.
const START_ATTEMPTS: usize = 4;

/// Ports already handed out in this test process. The kernel may hand a port it just
/// released to the next `bind(0)`, so tests starting servers at the same moment would
/// otherwise race for one port.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// `count` distinct loopback ports nothing listens on now, never handed out before in this
/// process.
fn free_ports(count: usize) -> Vec<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !handed_out.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    handed_out.extend(&ports);
    ports
}

/// Why a started redis-server is not accepting connections.
enum NotStarted {
    /// It exited: most often its port was taken meanwhile. Holds its log.
    Exited(String),
    /// It runs but did not listen within the bound.
    Silent,
}

/// Waits until `child` accepts connections on `port`, or says why it does not.
fn wait_for_port(child: &mut Child, port: u16, log: &std::path::Path) -> Result<(), NotStarted> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(NotStarted::Exited(
                std::fs::read_to_string(log).unwrap_or_default(),
            ));
        }
        if Instant::now() >= deadline {
            return Err(NotStarted::Silent);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Panics with what went wrong, after the last attempt.
fn give_up(port: u16, why: NotStarted) -> ! {
    match why {
        NotStarted::Exited(log) => {
            panic!("redis-server on {port} exited at start {START_ATTEMPTS} times; its log:\n{log}")
        }
        NotStarted::Silent => panic!("redis-server did not listen on {port} within 10 s"),
    }
}

/// Runs `program` with `args`, panicking with how to install it if it is missing.
fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} ({e}): {INSTALL}"))
}

/// A fresh directory for a server's files and log.
fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "token-refresh-{what}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct RedisServer {
    pub url: String,
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Further command-line settings of the server.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one. Fails, saying how to install it, when there is no `redis-server`: a
    /// Redis test is never skipped.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with further settings (`["--rename-command", "HELLO", ""]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = scratch_dir("redis");
        let mut attempt = 1;
        loop {
            let port = free_ports(1)[0];
            let mut server = Self {
                url: format!("redis://127.0.0.1:{port}/"),
                port,
                child: None,
                dir: dir.clone(),
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            match server.run() {
                Ok(()) => return server,
                Err(NotStarted::Exited(_)) if attempt < START_ATTEMPTS => attempt += 1,
                Err(why) => give_up(port, why),
            }
        }
    }

    fn run(&mut self) -> Result<(), NotStarted> {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &self.dir.display().to_string(),
            "--logfile",
            &log.display().to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .chain(self.extra.iter().cloned())
        .collect();
        let mut child = spawn("redis-server", &args);
        let started = wait_for_port(&mut child, self.port, &log);
        if started.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            self.child = Some(child);
        }
        started
    }

    /// Stops the server (SIGKILL: no goodbye to the clients).
    pub fn stop(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("only a server started here can be stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        if let Err(why) = self.run() {
            give_up(self.port, why);
        }
    }

    /// A plain connection for the test's own commands.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster on loopback: three masters, each with one replica.
pub struct RedisCluster {
    /// `redis://127.0.0.1:{port}/` of every node.
    pub urls: Vec<String>,
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes and joins them (3 masters, 3 replicas); returns once every slot is
    /// served and every replica is attached.
    pub fn start() -> Self {
        let mut attempt = 1;
        let cluster = loop {
            let ports = free_ports(12);
            let (ports, bus) = ports.split_at(6);
            let mut cluster = Self {
                urls: ports
                    .iter()
                    .map(|p| format!("redis://127.0.0.1:{p}/"))
                    .collect(),
                ports: ports.to_vec(),
                children: Vec::new(),
                dir: scratch_dir("cluster"),
            };
            match cluster.start_nodes(bus) {
                Ok(()) => break cluster,
                Err((_, NotStarted::Exited(_))) if attempt < START_ATTEMPTS => attempt += 1,
                Err((port, why)) => give_up(port, why),
            }
        };
        let ports = cluster.ports.clone();
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let output = Command::new("redis-cli")
            .args(&create)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {INSTALL}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_ready();
        cluster
    }

    /// Starts a node on each port, with its cluster bus on the matching `bus` port; says
    /// which node did not start, and why.
    fn start_nodes(&mut self, bus: &[u16]) -> Result<(), (u16, NotStarted)> {
        for (port, bus) in self.ports.iter().zip(bus) {
            let log = self.dir.join(format!("redis-{port}.log"));
            let args: Vec<String> = [
                "--port".to_owned(),
                port.to_string(),
                "--cluster-port".to_owned(),
                bus.to_string(),
                "--bind".to_owned(),
                "127.0.0.1".to_owned(),
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                self.dir
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
                "--dir".to_owned(),
                self.dir.display().to_string(),
                "--logfile".to_owned(),
                log.display().to_string(),
                "--save".to_owned(),
                String::new(),
                "--appendonly".to_owned(),
                "no".to_owned(),
            ]
            .to_vec();
            self.children.push(spawn("redis-server", &args));
        }
        for (child, port) in self.children.iter_mut().zip(&self.ports) {
            let log = self.dir.join(format!("redis-{port}.log"));
            wait_for_port(child, *port, &log).map_err(|why| (*port, why))?;
        }
        Ok(())
    }

    /// Until every node says the cluster is ok with all slots, and there are three
    /// replicas.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.ports.iter().all(|port| {
                let info = self.query::<String>(*port, redis::cmd("CLUSTER").arg("INFO"));
                info.is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains("cluster_known_nodes:6")
                })
            }) && self.replicas().len() == 3;
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain connection to the node on `port`.
    pub fn connection(&self, port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &mut redis::Cmd) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        cmd.query(&mut conn).ok()
    }

    /// The ports of the replicas, each with its master's port.
    fn replicas(&self) -> Vec<(u16, u16)> {
        self.ports
            .iter()
            .filter_map(|port| {
                let info: String = self.query(*port, redis::cmd("INFO").arg("replication"))?;
                if !info.contains("role:slave") {
                    return None;
                }
                let master = info
                    .lines()
                    .find_map(|l| l.strip_prefix("master_port:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((*port, master))
            })
            .collect()
    }

    /// Every key on every master that matches `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .ports
            .iter()
            .filter(|port| !self.replicas().iter().any(|(r, _)| r == *port))
            .flat_map(|port| {
                self.query::<Vec<String>>(*port, redis::cmd("KEYS").arg(pattern))
                    .unwrap_or_default()
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The port of the master that serves `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .query(self.ports[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT");
        let slots: Vec<Vec<redis::Value>> = self
            .query(self.ports[0], redis::cmd("CLUSTER").arg("SLOTS"))
            .expect("CLUSTER SLOTS");
        for range in slots {
            let number = |v: &redis::Value| match v {
                redis::Value::Int(n) => *n,
                _ => -1,
            };
            let (start, end) = (number(&range[0]), number(&range[1]));
            if (start..=end).contains(&i64::from(slot))
                && let redis::Value::Array(master) = &range[2]
            {
                return number(&master[1]) as u16;
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// A manual failover of the master that serves `key` (`CLUSTER FAILOVER` on its
    /// replica, which takes over without losing a write); returns once the replica is the
    /// master of the slot. Returns (old master, new master).
    pub fn failover(&self, key: &str) -> (u16, u16) {
        let master = self.master_of(key);
        let (replica, _) = *self
            .replicas()
            .iter()
            .find(|(_, m)| *m == master)
            .expect("the master has a replica");
        let () = self
            .query(replica, redis::cmd("CLUSTER").arg("FAILOVER"))
            .expect("CLUSTER FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.master_of(key) != replica {
            assert!(Instant::now() < deadline, "the failover did not complete");
            std::thread::sleep(Duration::from_millis(50));
        }
        (master, replica)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        stop_all(&mut self.children, &self.dir);
    }
}

/// Kills `children` and removes `dir`: what a group of servers leaves when it goes.
fn stop_all(children: &mut [Child], dir: &std::path::Path) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A master, its replica and one Redis Sentinel that monitors them as `mymaster` (quorum 1,
/// so that this one sentinel can fail the master over).
pub struct RedisSentinel {
    /// `redis://127.0.0.1:{port}/` of the sentinel.
    pub sentinel_url: String,
    /// The ports of the servers: the master first, then the replica (at start).
    pub ports: [u16; 2],
    sentinel_port: u16,
    children: Vec<Child>,
    dir: PathBuf,
}

/// The name the sentinel monitors the master under.
pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinel {
    /// Starts the master, the replica (attached) and the sentinel; returns once the
    /// sentinel knows the replica.
    pub fn start() -> Self {
        let mut attempt = 1;
        let sentinel = loop {
            let ports = free_ports(3);
            let mut sentinel = Self {
                sentinel_url: format!("redis://127.0.0.1:{}/", ports[2]),
                ports: [ports[0], ports[1]],
                sentinel_port: ports[2],
                children: Vec::new(),
                dir: scratch_dir("sentinel"),
            };
            match sentinel.start_processes() {
                Ok(()) => break sentinel,
                Err((_, NotStarted::Exited(_))) if attempt < START_ATTEMPTS => attempt += 1,
                Err((port, why)) => give_up(port, why),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinel.replica_known() {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not find the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sentinel
    }

    fn start_processes(&mut self) -> Result<(), (u16, NotStarted)> {
        let [master, replica] = self.ports;
        for port in [master, replica] {
            let log = self.dir.join(format!("redis-{port}.log"));
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.display().to_string(),
                "--dbfilename",
                &format!("dump-{port}.rdb"),
                "--logfile",
                &log.display().to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if port == replica {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            }
            let mut child = spawn("redis-server", &args);
            let started = wait_for_port(&mut child, port, &log);
            self.children.push(child);
            started.map_err(|why| (port, why))?;
        }
        let config = self.dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                port = self.sentinel_port,
                dir = self.dir.display(),
            ),
        )
        .unwrap();
        let log = self.dir.join("sentinel.log");
        let args = [
            config.display().to_string(),
            "--sentinel".into(),
            "--logfile".into(),
            log.display().to_string(),
        ];
        let mut child = spawn("redis-server", &args);
        let started = wait_for_port(&mut child, self.sentinel_port, &log);
        self.children.push(child);
        started.map_err(|why| (self.sentinel_port, why))
    }

    fn sentinel_query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Option<T> {
        let client = redis::Client::open(self.sentinel_url.as_str()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        cmd.query(&mut conn).ok()
    }

    /// Whether the sentinel lists the replica, attached and up.
    fn replica_known(&self) -> bool {
        let replicas: Option<Vec<std::collections::HashMap<String, String>>> =
            self.sentinel_query(redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER));
        replicas.is_some_and(|replicas| {
            replicas.iter().any(|r| {
                r.get("flags").is_some_and(|f| f == "slave")
                    && r.get("master-link-status").is_some_and(|s| s == "ok")
            })
        })
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> u16 {
        let addr: Vec<String> = self
            .sentinel_query(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        addr[1].parse().unwrap()
    }

    /// `SENTINEL FAILOVER`: the replica becomes the master, the master its replica;
    /// returns once the sentinel names the new master, it says it is one, and the old one
    /// says it is a replica. Returns
    /// (old master, new master).
    pub fn failover(&self) -> (u16, u16) {
        let old = self.master_port();
        let new = if old == self.ports[0] {
            self.ports[1]
        } else {
            self.ports[0]
        };
        let () = self
            .sentinel_query(redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_MASTER))
            .expect("SENTINEL FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let role: Option<String> = redis::Client::open(format!("redis://127.0.0.1:{new}/"))
                .ok()
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)).ok())
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok());
            let demoted: Option<String> = redis::Client::open(format!("redis://127.0.0.1:{old}/"))
                .ok()
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)).ok())
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok());
            if self.master_port() == new
                && role.is_some_and(|r| r.contains("role:master"))
                && demoted.is_some_and(|r| r.contains("role:slave"))
            {
                return (old, new);
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel failover did not complete"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        stop_all(&mut self.children, &self.dir);
    }
}
