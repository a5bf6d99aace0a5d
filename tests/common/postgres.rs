//! Real PostgreSQL for the tests, never a mock: the project's machines run PostgreSQL 15 on
//! 127.0.0.1:5432 with trust authentication and a database `test` (`scripts/test` starts it when
//! none answers). Each test gets a schema of its own there ([`Schema`], dropped at the end); a
//! test that stops and restarts the database starts its own server ([`OwnPostgres`]) in a
//! temporary directory on a free port, never touching the machine's.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{what}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs SQL with psql against `port`'s database `db`; returns the unaligned, tuples-only output.
pub fn psql(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        ])
        .output()
        .expect("psql is installed (see scripts/test)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A schema of the test's own in the machine's database `test`, dropped when this goes away.
pub struct Schema {
    pub name: String,
    pub port: u16,
}

impl Schema {
    /// On the machine's PostgreSQL (127.0.0.1:5432).
    pub fn new() -> Schema {
        Schema::on(5432)
    }

    /// On the server at `port`.
    pub fn on(port: u16) -> Schema {
        let name = unique("pb");
        psql(port, "test", &format!("CREATE SCHEMA {name}"));
        Schema { name, port }
    }

    /// The URL the bot is given: the schema first on the search path, a password that trust
    /// authentication ignores (so tests can check it is never printed).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:pg-secret-pw@127.0.0.1:{}/test?options=-csearch_path%3D{}",
            self.port, self.name
        )
    }

    /// SQL in this schema.
    pub fn sql(&self, sql: &str) -> String {
        psql(
            self.port,
            "test",
            &format!("SET search_path TO {}; {sql}", self.name),
        )
    }

    /// How many events the table holds; `None` while it doesn't exist yet (the bot creates it
    /// when it first reaches the database).
    pub fn rows(&self) -> Option<u64> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "test", "-qAt", "-c"])
            .arg(format!(
                "SET search_path TO {}; SELECT count(*) FROM audit_events",
                self.name
            ))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// `SELECT count(*)` of `audit_events` matching `condition`.
    pub fn count(&self, condition: &str) -> u64 {
        self.sql(&format!(
            "SELECT count(*) FROM audit_events WHERE {condition}"
        ))
        .parse()
        .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "test", "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A PostgreSQL server of the test's own (initdb into a temporary directory, a free loopback
/// port), to stop and start at will. Removed when this goes away.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
}

/// Runs a PostgreSQL tool as the `postgres` user when the tests run as root (initdb refuses
/// root), else as the current user.
fn as_postgres(tool: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{BIN}/{tool}");
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl OwnPostgres {
    /// initdb, start, and a database `test`.
    pub fn start() -> OwnPostgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("pb-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.to_str().unwrap().to_string();
        let out = as_postgres(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = OwnPostgres { port, dir };
        pg.start_again();
        psql(port, "postgres", "CREATE DATABASE test");
        pg
    }

    /// Starts the stopped server (same port, same data) and waits until it answers.
    pub fn start_again(&self) {
        let data = self.dir.to_str().unwrap();
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        let log = format!("{data}/server.log");
        let out = as_postgres(
            "pg_ctl",
            &[
                "-D", data, "-o", &options, "-l", &log, "-w", "-t", "30", "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (connections cut, as a crash or a failover would).
    pub fn stop(&self) {
        let data = self.dir.to_str().unwrap();
        let out = as_postgres("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.to_str().unwrap().to_string();
        let _ = as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
