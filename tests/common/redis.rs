//! Real Redis for the tests, never a mock: the project's machines run one on 127.0.0.1:6379
//! (`.ci/run` starts it when missing), which tests share with a key prefix of their own; a
//! test that stops or restarts Redis starts its own `redis-server` on a free port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis every replica test may use, with a fresh key prefix (so tests never see
/// each other's keys).
pub fn shared() -> (String, String) {
    let prefix = format!("test-{}:", portal_bot_test_id());
    ("redis://127.0.0.1:6379/0".to_string(), prefix)
}

fn portal_bot_test_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `[state]` for a replica on `url` under `prefix`.
pub fn state_toml(url: &str, prefix: &str) -> String {
    format!("[state]\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n")
}

/// A `redis-server` of the test's own, on a free loopback port, keeping nothing on disk.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one and waits until it answers.
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts the server on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (see .ci/run)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a Redis
    /// that hangs or a network that drops packets.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws a frozen server (SIGCONT); it answers again with its data intact.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig}");
        }
    }

    /// Kills the server outright (its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.thaw_child(&child);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn thaw_child(&self, child: &Child) {
        let _ = Command::new("kill")
            .args(["-CONT", &child.id().to_string()])
            .status();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
