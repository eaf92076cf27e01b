//! The embedded event history: SQLite (bundled) in `--data-dir/events.db`, WAL mode.
//!
//! One writer (the sink thread) appends in batches, one transaction per batch; a [`Pruner`] on
//! a connection of its own deletes by age (`--retention`) and by a row cap (`--max-events`) on
//! a timer, whether events arrive or not. Readers (the API) use their own connection: WAL lets
//! them read while the writer writes. Ids are assigned here and never reused: the highest id
//! handed out is kept in `meta` in the same transaction as the rows, so ids keep increasing
//! across restarts and after pruning has emptied the table, and also when a write fails (a
//! full disk is counted, the events still go to the log and the metrics).
//!
//! A file SQLite finds corrupt at start-up (`PRAGMA quick_check`, or not a database at all) is
//! moved aside as `events.db.corrupt-<unix seconds>` with its WAL, and a fresh history is
//! started, so the node stays monitored; the agent logs it and counts it.
//!
//! The data dir is made mode 0700 and `events.db` 0600 (its WAL and shared-memory files take
//! the database's mode): the history names processes, pods and peers.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value};

use crate::events::Event;

pub mod query;

pub use query::{Filter, MAX_LIMIT};

/// Start-up failures of the store; each names the data dir or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data dir cannot be created or written.
    #[error("data dir {dir}: {source} (set --data-dir to a writable directory)")]
    Dir {
        /// The directory.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused the file: not a database, corrupt, locked.
    #[error("event store {file}: {source} (move the file away to start a new history)")]
    Db {
        /// The file.
        file: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    namespace TEXT,
    pod TEXT,
    peer_addr TEXT NOT NULL,
    peer_port INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns);
CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts_ns);
CREATE INDEX IF NOT EXISTS events_pid ON events (pid);
CREATE INDEX IF NOT EXISTS events_comm ON events (comm);
CREATE INDEX IF NOT EXISTS events_peer ON events (peer_addr, peer_port);
CREATE INDEX IF NOT EXISTS events_pod ON events (namespace, pod);
CREATE INDEX IF NOT EXISTS events_pod_name ON events (pod);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// `meta` key of the highest id handed out.
const LAST_ID: &str = "last_id";

/// The writer side of the store.
pub struct Store {
    conn: Connection,
    file: PathBuf,
    next_id: u64,
    moved_aside: Option<PathBuf>,
}

/// Opens `dir/events.db` for writing, creating the directory and the schema, and checks it; a
/// corrupt file is moved aside and a fresh one created (see the module doc).
pub fn open(dir: &Path) -> Result<Store, Error> {
    // The history names processes, pods and peers: the agent's alone to read.
    std::fs::create_dir_all(dir)
        .and_then(|()| private(dir, 0o700))
        .map_err(|source| Error::Dir {
            dir: dir.display().to_string(),
            source,
        })?;
    let file = dir.join("events.db");
    match open_file(&file) {
        Err(Error::Db { source, .. }) if is_corrupt(&source) => {
            let aside = move_aside(&file).map_err(|source| Error::Dir {
                dir: dir.display().to_string(),
                source,
            })?;
            tracing::warn!(file = %file.display(), moved_to = %aside.display(), error = %source, "event history corrupt: moved aside, starting a new one");
            let mut store = open_file(&file)?;
            store.moved_aside = Some(aside);
            Ok(store)
        }
        other => other,
    }
}

fn open_file(file: &Path) -> Result<Store, Error> {
    let db_err = |source| Error::Db {
        file: file.display().to_string(),
        source,
    };
    let conn = Connection::open(file).map_err(db_err)?;
    // Before the WAL exists: SQLite gives the WAL and shared-memory files the database's mode.
    private(file, 0o600).map_err(|source| Error::Dir {
        dir: file.display().to_string(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(db_err)?;
    if check != "ok" {
        return Err(db_err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        )));
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db_err)?;
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    let (max, last): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE((SELECT MAX(id) FROM events), 0),
                    COALESCE((SELECT value FROM meta WHERE key = ?1), 0)",
            [LAST_ID],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
    Ok(Store {
        conn,
        next_id: u64::try_from(max.max(last)).unwrap_or(0) + 1,
        file: file.to_owned(),
        moved_aside: None,
    })
}

/// Sets `path`'s permission bits to `mode` (0700 for the data dir, 0600 for the database).
fn private(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether SQLite's answer means the file is damaged or not a database (not locked, not a
/// permission problem: those are for the operator, and moving the file would not help).
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Renames `file` and its WAL and shared-memory files to `<name>.corrupt-<unix seconds>...`.
fn move_aside(file: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let with = |suffix: &str| {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let aside = with(&format!(".corrupt-{secs}"));
    std::fs::rename(file, &aside)?;
    for extra in ["-wal", "-shm"] {
        let from = with(extra);
        if from.exists() {
            let mut to = aside.as_os_str().to_owned();
            to.push(extra);
            std::fs::rename(from, to)?;
        }
    }
    Ok(aside)
}

impl Store {
    /// The database file, for readers.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where a corrupt history found at start-up was moved, if one was.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// A pruner on a connection of its own, for a thread that prunes on a timer.
    pub fn pruner(&self) -> rusqlite::Result<Pruner> {
        let conn = Connection::open(&self.file)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Pruner { conn })
    }

    /// Gives each event its id, then appends them all in one transaction. On error the events
    /// keep their ids (the log and metrics still see them) and the error is returned to count.
    pub fn append(&mut self, events: &mut [Event]) -> rusqlite::Result<()> {
        for e in events.iter_mut() {
            e.id = self.next_id;
            self.next_id += 1;
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (id, ts_ns, kind, pid, comm, namespace, pod, peer_addr, peer_port, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for e in events.iter() {
                let json = serde_json::to_string(e).unwrap_or_default();
                stmt.execute(rusqlite::params![
                    e.id as i64,
                    e.wall_ns as i64,
                    e.kind.as_str(),
                    e.owner.pid,
                    e.owner.comm,
                    e.owner.workload.namespace,
                    e.owner.workload.pod,
                    e.ends.peer_addr.to_string(),
                    e.ends.peer_port,
                    json,
                ])?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![LAST_ID, (self.next_id - 1) as i64],
            )?;
        }
        tx.commit()
    }

    /// [`Pruner::prune`] on the writer's own connection.
    pub fn prune(&self, now_ns: u64, keep_ns: u64, max_rows: u64) -> rusqlite::Result<usize> {
        prune(&self.conn, now_ns, keep_ns, max_rows)
    }
}

/// Deletes old events from a connection of its own (see [`Store::pruner`]).
pub struct Pruner {
    conn: Connection,
}

impl Pruner {
    /// Deletes events older than `keep_ns` before `now_ns` and beyond the newest `max_rows`.
    pub fn prune(&self, now_ns: u64, keep_ns: u64, max_rows: u64) -> rusqlite::Result<usize> {
        prune(&self.conn, now_ns, keep_ns, max_rows)
    }
}

fn prune(conn: &Connection, now_ns: u64, keep_ns: u64, max_rows: u64) -> rusqlite::Result<usize> {
    let cutoff = i64::try_from(now_ns.saturating_sub(keep_ns)).unwrap_or(i64::MAX);
    let old = conn.execute("DELETE FROM events WHERE ts_ns < ?1", [cutoff])?;
    let over = conn.execute(
        "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [i64::try_from(max_rows).unwrap_or(i64::MAX)],
    )?;
    Ok(old + over)
}

/// A read-only connection for queries.
pub struct Reader {
    conn: Connection,
    time_limit: Duration,
}

/// How long one query may run unless told otherwise (`--query-time-limit`).
pub const QUERY_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Whether `e` is a query stopped at its time limit.
pub fn is_cut(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

impl Reader {
    /// Opens `file` read-only.
    pub fn open(file: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Self {
            conn,
            time_limit: QUERY_TIME_LIMIT,
        })
    }

    /// Stops each later query after `limit` (an error [`is_cut`] tells apart).
    pub fn set_time_limit(&mut self, limit: Duration) {
        self.time_limit = limit;
    }

    /// Events matching `f`, newest first, as stored JSON; stopped at the time limit.
    pub fn query(&mut self, f: &Filter) -> rusqlite::Result<Vec<String>> {
        let deadline = std::time::Instant::now() + self.time_limit;
        // SQLite asks every 10,000 virtual-machine steps (well under a millisecond).
        self.conn
            .progress_handler(10_000, Some(move || std::time::Instant::now() >= deadline))?;
        let (sql, args) = f.sql();
        let rows = self.conn.prepare_cached(&sql).and_then(|mut stmt| {
            stmt.query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(0))?
                .collect()
        });
        self.conn.progress_handler(0, None::<fn() -> bool>)?;
        rows
    }

    /// Number of stored events.
    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    }
}

/// Values bound to a query.
pub(crate) type Args = Vec<Value>;

#[cfg(test)]
mod tests;
