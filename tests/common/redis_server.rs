#![allow(dead_code)]
//! A real Redis for the tests: `TOKEN_REFRESH_TEST_REDIS_URL` if set, else a `redis-server`
//! started here on a free loopback port with no persistence, stopped when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub url: String,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one (or uses the one named by `TOKEN_REFRESH_TEST_REDIS_URL`). Fails, saying how
    /// to install it, when there is no `redis-server`: a Redis test is never skipped.
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("TOKEN_REFRESH_TEST_REDIS_URL") {
            return Self {
                url,
                port: 0,
                child: None,
            };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            child: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it with \
                     `apt-get install -y redis-server` (the README's test command, \
                     `bash .ci/run`, does), or point TOKEN_REFRESH_TEST_REDIS_URL at a Redis"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        self.run();
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
    }
}
