//! One agent per node: an exclusive `flock(2)` on the data dir's `agent.lock` and on the pin
//! directory, taken before anything is loaded or opened for writing, held until the agent
//! exits (the kernel drops it with the process, so a `kill -9` leaves no stale lock). A second
//! agent on either gets one line naming the holder's pid and exits, before it can replace the
//! first's pinned iterator or write into its history.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// The lock file in the data dir; it holds the holder's pid, for people and for the message.
const LOCK_FILE: &str = "agent.lock";

/// The locks an agent holds while it runs.
#[derive(Debug)]
pub struct Held {
    _files: Vec<File>,
}

/// Another agent holds a lock, or a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds it.
    #[error(
        "another observer agent ({holder}) holds {path}: one agent per node (stop it, or give this one another --data-dir and --pin-dir)"
    )]
    Held {
        /// The locked path.
        path: String,
        /// `pid N`, or `pid unknown` when `/proc/locks` does not say.
        holder: String,
    },
    /// The lock file or directory could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Locks `data_dir` (created if missing) and `pin_dir` (which must exist, on bpffs) for this
/// process.
pub fn acquire(data_dir: &Path, pin_dir: &Path) -> Result<Held, Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let file_path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&file_path)
        .map_err(io(&file_path))?;
    lock(&file, &file_path)?;
    // Ours now: the pid is for whoever finds the lock held.
    file.set_len(0).map_err(io(&file_path))?;
    writeln!(file, "{}", std::process::id()).map_err(io(&file_path))?;
    // bpffs holds no regular files: the directory itself is locked.
    let dir = File::open(pin_dir).map_err(io(pin_dir))?;
    lock(&dir, pin_dir)?;
    Ok(Held {
        _files: vec![file, dir],
    })
}

/// Takes an exclusive lock on `file` without waiting.
fn lock(file: &File, path: &Path) -> Result<(), Error> {
    let Err(err) = crate::sys::lock_exclusive(std::os::fd::AsFd::as_fd(file)) else {
        return Ok(());
    };
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: err,
        });
    }
    let holder = file
        .metadata()
        .ok()
        .and_then(|m| {
            let locks = std::fs::read_to_string("/proc/locks").ok()?;
            holder_pid(&locks, m.dev(), m.ino())
        })
        .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
    Err(Error::Held {
        path: PathBuf::from(path).display().to_string(),
        holder,
    })
}

/// The pid holding a `FLOCK` on the file `(dev, ino)`, from `/proc/locks` text: lines such as
/// `1: FLOCK  ADVISORY  WRITE 4242 00:1f:5678 0 EOF`, the device as hex `major:minor`.
fn holder_pid(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        // A blocked waiter's line starts with `->`: not the holder.
        if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&want.as_str()) {
            return None;
        }
        fields.get(4)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let dev = libc::makedev(0, 0x1f);
        let locks = "1: POSIX  ADVISORY  WRITE 11 00:1f:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:1f:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 77 00:1f:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 99 00:20:5678 0 EOF\n";
        assert_eq!(holder_pid(locks, dev, 5678), Some(4242));
        assert_eq!(holder_pid(locks, dev, 1), None);
    }

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let data = tempfile::tempdir().unwrap();
        let pins = tempfile::tempdir().unwrap();
        let first = acquire(data.path(), pins.path()).unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        let e = acquire(data.path(), pins.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "another observer agent (pid {}) holds {}",
                std::process::id(),
                data.path().join(LOCK_FILE).display()
            )),
            "{e}"
        );
        let other_data = tempfile::tempdir().unwrap();
        let e = acquire(other_data.path(), pins.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("holds {}", pins.path().display())),
            "{e}"
        );
        drop(first);
        acquire(data.path(), pins.path()).unwrap();
    }
}
