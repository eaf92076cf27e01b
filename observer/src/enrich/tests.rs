use super::*;

const ID: &str = "8f3c1a4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
const UID: &str = "1f0e9d8c-7b6a-4958-8473-625140302010";

/// A fake cgroup tree and kubelet log layout in a temp dir: the tree's inodes are real.
fn layout() -> (tempfile::TempDir, Sources, u64, u64) {
    let root = tempfile::tempdir().unwrap();
    let cg = root.path().join("cgroup");
    let uid_ = UID.replace('-', "_");
    let container = cg.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
    ));
    std::fs::create_dir_all(&container).unwrap();
    let host = cg.join("system.slice/sshd.service");
    std::fs::create_dir_all(&host).unwrap();
    let pods = root.path().join("pods");
    std::fs::create_dir_all(pods.join(format!("shop_web-7d9f_{UID}/app"))).unwrap();
    let logs = root.path().join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join(format!("web-7d9f_shop_app-{ID}.log")), b"").unwrap();
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let sources = Sources {
        cgroup_root: Some(cg.clone()),
        pod_logs: pods,
        container_logs: logs,
    };
    let (c, h) = (ino(&container), ino(&host));
    (root, sources, c, h)
}

#[test]
fn a_container_cgroup_names_its_pod_namespace_and_container() {
    let (_root, sources, container, host) = layout();
    let mut e = Enricher::new(sources);
    assert_eq!(
        e.lookup(container),
        Attribution {
            container_id: Some(ID.to_owned()),
            container: Some("app".to_owned()),
            pod: Some("web-7d9f".to_owned()),
            namespace: Some("shop".to_owned()),
        }
    );
    assert_eq!(e.lookup(host), Attribution::default(), "the host");
    assert_eq!(e.lookup(0), Attribution::default());
}

#[test]
fn misses_rescan_at_most_once_a_second() {
    let (root, sources, _, _) = layout();
    let mut e = Enricher::new(sources.clone());
    let _ = e.lookup(1);
    // A pod created after the first scan is not seen until the rate limit allows a rescan.
    let late = sources
        .cgroup_root
        .as_ref()
        .unwrap()
        .join(format!("kubepods/besteffort/pod{UID}/{ID}"));
    std::fs::create_dir_all(&late).unwrap();
    let ino = std::fs::metadata(&late).unwrap().ino();
    assert_eq!(
        e.lookup(ino),
        Attribution::default(),
        "within the rate limit"
    );
    assert!(
        !e.cache.contains_key(&ino),
        "an unknown cgroup is not cached"
    );
    e.last_scan = Some(Instant::now().checked_sub(RESCAN_EVERY).unwrap());
    assert_eq!(e.lookup(ino).pod.as_deref(), Some("web-7d9f"));
    assert!(e.cache.contains_key(&ino));
    drop(root);
}

#[test]
fn log_names_parse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path()
            .join(format!("api-0_prod_sidecar-proxy-{ID}.log")),
        b"",
    )
    .unwrap();
    std::fs::write(dir.path().join("garbage.log"), b"").unwrap();
    std::fs::write(dir.path().join("notalog"), b"").unwrap();
    let c = containers(dir.path());
    assert_eq!(c.get(ID).map(String::as_str), Some("sidecar-proxy"));
    assert_eq!(c.len(), 1);
}
