//! A private `redis-server` per test, on loopback, as the fleet's shared counter store.
//!
//! No persistence (`--save ""`, no AOF): a restarted server starts empty, the worst case for
//! a fleet's resync. [`Redis::stop`] and [`Redis::restart`] (same port) let a test take it away
//! mid-run. `Drop` kills it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::free_port;

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// Starts on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("mailgate-redis-")
            .tempdir()
            .expect("tempdir");
        let mut redis = Redis {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
            dir,
        };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server and waits until its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "redis still listening after kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("redis-server not found; run scripts/install-test-deps");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("log");
        let child = Command::new(binary)
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.pings() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not answering on {}\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Keys the server holds now (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect redis");
        s.write_all(b"DBSIZE\r\n").expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        line.trim()
            .trim_start_matches(':')
            .parse()
            .expect("integer reply")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
