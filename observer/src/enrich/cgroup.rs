//! Container id and pod uid from a cgroup v2 path, for the layouts kubelet and the common
//! runtimes create:
//!
//! | driver | example |
//! |---|---|
//! | kubelet, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | kubelet, cgroupfs | `/kubepods/besteffort/pod<uid>/<id>` |
//! | CRI-O | `.../crio-<id>.scope` (systemd) or `.../<id>` (cgroupfs) |
//! | Docker | `/system.slice/docker-<id>.scope`, `/docker/<id>` |
//!
//! Guaranteed pods have no QoS level (`kubepods-pod<uid>.slice`, `/kubepods/pod<uid>`).

/// What a cgroup path says about its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The pod's uid, with dashes.
    pub pod_uid: Option<String>,
    /// The container id (64 hex digits).
    pub container_id: Option<String>,
}

/// A 64-digit hex container id.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in one path component, for every runtime's naming.
fn container_in(component: &str) -> Option<String> {
    let bare = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "containerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|p| bare.strip_prefix(p))
    .unwrap_or(bare);
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

/// The pod uid in one path component (`pod<uid>` or `kubepods-<qos>-pod<uid>.slice`).
fn pod_in(component: &str) -> Option<String> {
    let bare = component.strip_suffix(".slice").unwrap_or(component);
    let uid = bare.rsplit_once("pod").map(|(_, u)| u)?;
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// Parses a cgroup v2 path (relative to the cgroup2 mount).
pub fn parse(path: &str) -> Workload {
    let mut w = Workload::default();
    let in_kubepods = path
        .split('/')
        .any(|c| c == "kubepods" || c.starts_with("kubepods.slice") || c.starts_with("kubepods-"));
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if in_kubepods && w.pod_uid.is_none() && component.contains("pod") {
            w.pod_uid = pod_in(component);
        }
        if let Some(id) = container_in(component) {
            w.container_id = Some(id);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8f3c1a4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const UID: &str = "1f0e9d8c-7b6a-4958-8473-625140302010";

    fn w(uid: Option<&str>, id: Option<&str>) -> Workload {
        Workload {
            pod_uid: uid.map(str::to_owned),
            container_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn kubelet_systemd_driver_with_each_runtime() {
        let uid_ = UID.replace('-', "_");
        for (scope, qos) in [
            (format!("cri-containerd-{ID}.scope"), "burstable"),
            (format!("crio-{ID}.scope"), "besteffort"),
            (format!("docker-{ID}.scope"), "burstable"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/{scope}"
            );
            assert_eq!(parse(&path), w(Some(UID), Some(ID)), "{path}");
        }
        let guaranteed =
            format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parse(&guaranteed), w(Some(UID), Some(ID)));
        let pod_only =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        assert_eq!(
            parse(&pod_only),
            w(Some(UID), None),
            "the pod's own cgroup (pause, sidecar-less)"
        );
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            w(Some(UID), Some(ID))
        );
        assert_eq!(
            parse(&format!("/kubepods/pod{UID}/{ID}")),
            w(Some(UID), Some(ID))
        );
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
            w(Some(UID), Some(ID))
        );
    }

    #[test]
    fn plain_docker_and_hosts() {
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope")),
            w(None, Some(ID))
        );
        assert_eq!(parse(&format!("/docker/{ID}")), w(None, Some(ID)));
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope"),
            w(None, None)
        );
        assert_eq!(parse("/system.slice/sshd.service"), w(None, None));
        assert_eq!(parse("/"), w(None, None));
        // Not a pod: "pod" in a name outside kubepods, a 64-char name that is not hex.
        assert_eq!(parse("/system.slice/podman.service"), w(None, None));
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/{}", "z".repeat(64))),
            w(Some(UID), None)
        );
    }
}
