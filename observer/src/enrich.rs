//! Workload attribution: the cgroup id the programs record with each owner -> its cgroup v2
//! path (a walk of the cgroup2 mount, where the id is the directory's inode) -> container id
//! and pod uid ([`cgroup`]) -> pod name, namespace and container name from the kubelet's
//! on-disk log layout, which a DaemonSet mounts read-only:
//!
//! * `/var/log/pods/<namespace>_<pod>_<uid>/` names each pod on the node;
//! * `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` names each
//!   container.
//!
//! No Kubernetes API access is needed. Lookups are cached; a miss re-reads the directories at
//! most once per [`RESCAN_EVERY`]. Processes outside any container keep empty attribution:
//! the host, named by their `comm`.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub mod cgroup;

/// How often a cache miss may re-read the cgroup tree and the log directories.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Entries kept before the cache starts over.
const MAX_CACHED: usize = 16_384;

/// Who a cgroup belongs to. All `None` for the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Attribution {
    /// Container id.
    pub container_id: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The cgroup2 mount; `None` when the host has none (everything is the host then).
    pub cgroup_root: Option<PathBuf>,
    /// `/var/log/pods`.
    pub pod_logs: PathBuf,
    /// `/var/log/containers`.
    pub container_logs: PathBuf,
}

/// Cgroup id -> attribution, cached.
pub struct Enricher {
    sources: Sources,
    paths: HashMap<u64, String>,
    pods: HashMap<String, (String, String)>,
    containers: HashMap<String, String>,
    cache: HashMap<u64, Attribution>,
    last_scan: Option<Instant>,
}

impl Enricher {
    /// An enricher over `sources`; nothing is read until the first lookup.
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            paths: HashMap::new(),
            pods: HashMap::new(),
            containers: HashMap::new(),
            cache: HashMap::new(),
            last_scan: None,
        }
    }

    /// The attribution of `cgroup_id`.
    pub fn lookup(&mut self, cgroup_id: u64) -> Attribution {
        if cgroup_id == 0 {
            return Attribution::default();
        }
        if let Some(a) = self.cache.get(&cgroup_id) {
            return a.clone();
        }
        let (mut a, mut complete) = self.resolve(cgroup_id);
        if !complete && self.rescan() {
            (a, complete) = self.resolve(cgroup_id);
        }
        // Only complete answers are kept: a cgroup or pod too new for the last scan is asked
        // again (and may rescan) next time, instead of staying "host" for good.
        if complete {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(cgroup_id, a.clone());
        }
        a
    }

    /// What the current tables say, and whether that is all there is to know (the cgroup is
    /// known, and so are its pod and container when the path names them).
    fn resolve(&self, cgroup_id: u64) -> (Attribution, bool) {
        let Some(path) = self.paths.get(&cgroup_id) else {
            return (Attribution::default(), false);
        };
        let w = cgroup::parse(path);
        let pod = w.pod_uid.as_ref().and_then(|uid| self.pods.get(uid));
        let container = w
            .container_id
            .as_ref()
            .and_then(|id| self.containers.get(id).cloned());
        let complete = (w.pod_uid.is_none() || pod.is_some())
            && (w.container_id.is_none() || container.is_some());
        let a = Attribution {
            container,
            container_id: w.container_id,
            pod: pod.map(|(_, name)| name.clone()),
            namespace: pod.map(|(ns, _)| ns.clone()),
        };
        (a, complete)
    }

    /// Re-reads the cgroup tree and the log directories, at most once per [`RESCAN_EVERY`];
    /// true when it did. Forgets cached answers, which may have been incomplete.
    fn rescan(&mut self) -> bool {
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return false;
        }
        self.last_scan = Some(Instant::now());
        self.paths.clear();
        if let Some(root) = self.sources.cgroup_root.clone() {
            walk(&root, &root, &mut self.paths);
        }
        self.pods = pods(&self.sources.pod_logs);
        self.containers = containers(&self.sources.container_logs);
        self.cache.clear();
        true
    }
}

/// Every cgroup under `dir`: inode (the cgroup id) -> path relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut HashMap<u64, String>) {
    if let Ok(meta) = std::fs::metadata(dir) {
        let rel = dir
            .strip_prefix(root)
            .map_or_else(|_| String::new(), |p| p.display().to_string());
        out.insert(meta.ino(), format!("/{rel}"));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &e.path(), out);
        }
    }
}

/// `<namespace>_<pod>_<uid>` directories: uid -> (namespace, pod).
fn pods(dir: &Path) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Some((ns, pod, uid)) = pod_dir(&e.file_name().to_string_lossy()) {
            out.insert(uid.to_owned(), (ns.to_owned(), pod.to_owned()));
        }
    }
    out
}

/// `<namespace>_<pod>_<uid>` (a `/var/log/pods` directory) -> (namespace, pod, uid).
pub fn pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    // Namespaces and pod names cannot contain '_', uids neither.
    let mut parts = name.splitn(3, '_');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// `<pod>_<namespace>_<container>-<id>.log` files: container id -> container name.
fn containers(dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Some((id, container)) = container_log(&e.file_name().to_string_lossy()) {
            out.insert(id.to_ascii_lowercase(), container.to_owned());
        }
    }
    out
}

/// `<pod>_<namespace>_<container>-<id>.log` (a `/var/log/containers` link) -> (id, container).
pub fn container_log(name: &str) -> Option<(&str, &str)> {
    let (rest, id) = name.strip_suffix(".log")?.rsplit_once('-')?;
    Some((id, rest.splitn(3, '_').nth(2)?))
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split(' ').nth(4)?;
        post.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
    })
}

#[cfg(test)]
mod tests;
