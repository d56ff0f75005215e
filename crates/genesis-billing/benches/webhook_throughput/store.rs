//! The targets' databases, read by separate processes (`sqlite3`, Python's `sqlite3`, `psql`) while the
//! servers run: that a row is visible from outside is what "acknowledged means stored" is checked against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::probes::fs_type;

/// Where a target keeps its events.
pub enum Store {
    /// A SQLite file, read with the `sqlite3` CLI (or Python's `sqlite3`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`WEBHOOK_BENCH_DATABASE=postgres`), read with `psql`.
    Postgres { url: String },
}

impl Store {
    /// One value read by a separate process while the server runs.
    pub fn scalar(&self, sql: &str, python: &str) -> Result<String, String> {
        match self {
            Store::Sqlite(db) => sqlite_scalar(db, sql, python),
            Store::Postgres { url } => psql(url, sql),
        }
    }

    /// How commits are made durable, as far as it can be read from outside: SQLite's journal mode (persistent
    /// in the file when it is WAL; `synchronous` is per connection and cannot be read from outside), or
    /// PostgreSQL's `synchronous_commit` and `fsync`.
    pub fn durability_setting(&self, python: &str) -> String {
        match self {
            Store::Sqlite(db) => format!(
                "journal mode {}",
                sqlite_scalar(db, "PRAGMA journal_mode", python).unwrap_or_default()
            ),
            Store::Postgres { url } => format!(
                "synchronous_commit {}, fsync {}",
                psql(url, "SHOW synchronous_commit").unwrap_or_default(),
                psql(url, "SHOW fsync").unwrap_or_default()
            ),
        }
    }
}

/// A database created for this run on PostgreSQL, dropped (`WITH (FORCE)`) when this goes out of scope: at
/// the end of the run, or on the way out of a failed one.
pub struct PgDatabase {
    admin: String,
    /// `gb_bench_<random>`.
    pub name: String,
    /// The service's `DATABASE_URL`.
    pub url: String,
}

impl PgDatabase {
    /// Creates a fresh database through the admin connection `admin`.
    pub fn create(admin: &str) -> Result<Self, String> {
        let name = format!("gb_bench_{:016x}", fastrand::u64(..));
        let url = database_url(admin, &name)?;
        psql(admin, &format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("cannot create the bench database: {e}"))?;
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        match psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            Ok(_) => eprintln!("webhook_throughput: dropped database {}", self.name),
            Err(e) => eprintln!(
                "webhook_throughput: could not drop database {} (drop it by hand): {e}",
                self.name
            ),
        }
    }
}

/// `admin` (a `postgres://` URL) with its database replaced by `name`, query parameters kept.
fn database_url(admin: &str, name: &str) -> Result<String, String> {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("WEBHOOK_BENCH_POSTGRES_URL={admin:?} is not a postgres:// URL"))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(format!(
        "{scheme}://{authority}/{name}{}",
        query.map_or(String::new(), |q| format!("?{q}"))
    ))
}

/// One statement run by `psql` on `url`; its output, unaligned and without headers.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "psql {sql:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// One value read by a separate process (the sqlite3 CLI, else Python's sqlite3 module), read-only.
fn sqlite_scalar(db: &Path, sql: &str, python: &str) -> Result<String, String> {
    let cli = Command::new("sqlite3")
        .arg("-readonly")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output();
    let out = match cli {
        Ok(o) if o.status.success() => o,
        _ => Command::new(python)
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True, timeout=10); print(c.execute(sys.argv[2]).fetchone()[0])",
            ])
            .arg(db)
            .arg(sql)
            .output()
            .map_err(|e| format!("cannot read {}: {e}", db.display()))?,
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.is_empty() {
        return Err(format!(
            "cannot run {sql:?} on {}: {text}{}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// Rows in `table`.
pub fn count_rows(store: &Store, table: &str, python: &str) -> Result<u64, String> {
    let text = store.scalar(&format!("SELECT count(*) FROM {table}"), python)?;
    text.parse()
        .map_err(|_| format!("row count of {table}: {text:?}"))
}

/// "PostgreSQL 15.x at 127.0.0.1:5432, database gb_bench_…, data directory … (ext4)", as far as readable.
pub fn describe_postgres(url: &str, name: &str) -> String {
    let version = psql(url, "SHOW server_version").unwrap_or_default();
    let address = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
        .map(|a| a.rsplit_once('@').map_or(a, |(_, host)| host))
        .unwrap_or("");
    let data = psql(url, "SHOW data_directory").unwrap_or_default();
    let data = if data.is_empty() {
        String::new()
    } else {
        let fs = fs_type(Path::new(&data));
        format!(
            ", data directory {data}{}",
            if fs.is_empty() {
                String::new()
            } else {
                format!(" ({fs})")
            }
        )
    };
    format!("PostgreSQL {version} at {address}, database {name}{data}")
}
