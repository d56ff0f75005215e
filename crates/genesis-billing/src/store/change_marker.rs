//! A cheap value that changes whenever anything is committed to the database, by any connection or process,
//! so a result computed from the records can be reused until it does.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// SQLite's `PRAGMA data_version` on a connection of its own that never writes: it changes with every
/// commit made by another connection, ours or another process's.
pub(super) struct SqliteMarker {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for SqliteMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMarker").finish_non_exhaustive()
    }
}

impl SqliteMarker {
    /// The marker of a SQLite file; `None` for an in-memory database, which no other connection sees.
    pub(super) fn for_url(url: &str) -> Option<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename();
        let in_memory = path.to_string_lossy().starts_with("file:") || url.contains("mode=memory");
        (!in_memory).then(|| Self {
            path: path.to_owned(),
            conn: Mutex::new(None),
        })
    }

    /// The current data version; `None` when it cannot be read (callers then assume a change).
    pub(super) fn read(&self) -> Option<i64> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            // Opened at the first read, after the migrations created the file.
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .ok()?;
            *slot = Some(conn);
        }
        let conn = slot.as_ref()?;
        match conn.query_row("PRAGMA data_version", [], |r| r.get(0)) {
            Ok(v) => Some(v),
            Err(_) => {
                *slot = None;
                None
            }
        }
    }
}
