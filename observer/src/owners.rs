//! Who holds a socket, from its inode: the `/proc/<pid>/fd` links that read `socket:[inode]`.
//! Only for sockets the programs could not attribute (accepted and never read, or found at
//! start-up, listeners included): a walk of `/proc` is far too slow for every socket.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id.
    pub pid: u32,
    /// Process name.
    pub comm: String,
    /// cgroup v2 id (the inode of its cgroup directory), 0 if unknown.
    pub cgroup_id: u64,
}

/// Finds the owners of `inodes` under `proc_root` (normally `/proc`), one walk for all.
pub fn find<S: std::hash::BuildHasher>(
    proc_root: &Path,
    inodes: &HashSet<u64, S>,
) -> HashMap<u64, Owner> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let cgroup2 = crate::enrich::cgroup2_mount();
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(ino) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(&l))
            else {
                continue;
            };
            if inodes.contains(&ino) && !found.contains_key(&ino) {
                found.insert(ino, owner(&p.path(), pid, cgroup2.as_deref()));
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn owner(proc_dir: &Path, pid: u32, cgroup2: Option<&Path>) -> Owner {
    let comm = std::fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    let cgroup_id = cgroup2
        .and_then(|root| {
            let text = std::fs::read_to_string(proc_dir.join("cgroup")).ok()?;
            let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            std::fs::metadata(root.join(rel.trim_start_matches('/'))).ok()
        })
        .map_or(0, |m| m.ino());
    Owner {
        pid,
        comm,
        cgroup_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode(Path::new("socket:[4026]")), Some(4026));
        assert_eq!(socket_inode(Path::new("pipe:[4026]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn finds_this_process_as_the_owner_of_its_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .unwrap()
        .ino();
        let found = find(Path::new("/proc"), &HashSet::from([ino, 1]));
        let me = &found[&ino];
        assert_eq!(me.pid, std::process::id());
        assert_eq!(
            me.comm,
            std::fs::read_to_string("/proc/self/comm")
                .unwrap()
                .trim_end()
        );
        assert!(!found.contains_key(&1), "no socket has inode 1");
    }
}
