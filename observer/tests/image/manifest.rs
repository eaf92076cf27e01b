//! `deploy/daemonset.yaml` read through the official Kubernetes types and turned into podman
//! flags. Every field of the pod and container spec is either translated or named here as one
//! that has no podman counterpart (scheduling, probes the test runs itself); a new field fails
//! the test until it is translated.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1,
    core::v1::{Container, PodSpec, Volume},
};
use serde_json::Value;

/// Pod spec fields: translated (`hostPID`, `volumes`, `containers`, `securityContext`) or
/// not a container runtime's concern (scheduling, the account, no token mounted).
const POD_FIELDS: &[&str] = &[
    "serviceAccountName",
    "automountServiceAccountToken",
    "hostPID",
    "priorityClassName",
    "securityContext",
    "tolerations",
    "containers",
    "volumes",
];
/// Container fields: translated, or run by the test itself (the probes, from the node).
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "args",
    "env",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
];
/// Container securityContext fields, all translated.
const SECURITY_FIELDS: &[&str] = &[
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsUser",
    "runAsNonRoot",
    "seccompProfile",
    "capabilities",
];

/// The manifest's DaemonSet.
pub(crate) struct DaemonSet {
    raw: Value,
    typed: v1::DaemonSet,
}

impl DaemonSet {
    pub(crate) fn read() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
        let raw: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let typed = serde_json::from_value(raw.clone()).unwrap();
        let ds = Self { raw, typed };
        ds.check_translated();
        ds
    }

    fn check_translated(&self) {
        let pod = &self.raw["spec"]["template"]["spec"];
        let known = |v: &Value, fields: &[&str], what: &str| {
            for k in v.as_object().unwrap().keys() {
                assert!(
                    fields.contains(&k.as_str()),
                    "daemonset.yaml: {what}.{k} is not translated into podman flags by \
                     tests/image/manifest.rs"
                );
            }
        };
        known(pod, POD_FIELDS, "spec");
        let c = &pod["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1, "one container");
        known(&c[0], CONTAINER_FIELDS, "container");
        known(&c[0]["securityContext"], SECURITY_FIELDS, "securityContext");
    }

    fn pod(&self) -> &PodSpec {
        self.typed.spec.template.spec.as_ref().unwrap()
    }

    fn container(&self) -> &Container {
        &self.pod().containers[0]
    }

    /// The capabilities the container adds back (`SYS_ADMIN`, ...).
    pub(crate) fn added_capabilities(&self) -> Vec<String> {
        let sc = self.container().security_context.as_ref().unwrap();
        sc.capabilities
            .as_ref()
            .unwrap()
            .add
            .clone()
            .unwrap_or_default()
    }

    /// The agent's arguments.
    pub(crate) fn args(&self) -> Vec<String> {
        self.container().args.clone().unwrap_or_default()
    }

    /// The paths the kubelet probes (liveness, readiness).
    pub(crate) fn probe_paths(&self) -> Vec<String> {
        let c = self.container();
        [&c.liveness_probe, &c.readiness_probe]
            .into_iter()
            .flatten()
            .map(|p| p.http_get.as_ref().unwrap().path.clone().unwrap())
            .collect()
    }

    /// The container port the probes name.
    pub(crate) fn metrics_port(&self) -> u16 {
        let c = self.container();
        let probe = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let port = match &probe.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("no container port named {name}"))
                    .container_port
            }
        };
        u16::try_from(port).unwrap()
    }

    /// podman flags for the container, without capability `without`; `host_path` gives the
    /// host directory behind each hostPath volume (the test's own for state it must not share).
    pub(crate) fn podman_flags(
        &self,
        without: Option<&str>,
        host_path: &dyn Fn(&Volume) -> PathBuf,
    ) -> Vec<String> {
        let (pod, c) = (self.pod(), self.container());
        let sc = c.security_context.as_ref().unwrap();
        let mut flags = Vec::new();
        let mut flag = |f: &str, v: &str| {
            flags.push(f.to_owned());
            if !v.is_empty() {
                flags.push(v.to_owned());
            }
        };
        if pod.host_pid == Some(true) {
            flag("--pid", "host");
        }
        // A pod has a network namespace of its own; hostNetwork is not set.
        assert_ne!(pod.host_network, Some(true));
        flag("--network", "none");
        assert_ne!(sc.privileged, Some(true));
        let caps = sc.capabilities.as_ref().unwrap();
        for d in caps.drop.iter().flatten() {
            flag("--cap-drop", d);
        }
        for a in caps.add.iter().flatten() {
            if Some(a.as_str()) != without {
                flag("--cap-add", a);
            }
        }
        if sc.read_only_root_filesystem == Some(true) {
            // Kubernetes adds no writable tmpfs under a read-only root; podman would.
            flag("--read-only", "");
            flag("--read-only-tmpfs=false", "");
        }
        if sc.allow_privilege_escalation == Some(false) {
            flag("--security-opt", "no-new-privileges");
        }
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"), "podman's default profile");
        if let Some(uid) = sc.run_as_user {
            flag("--user", &uid.to_string());
        }
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        if let Some(mem) = limits.and_then(|l| l.get("memory")) {
            let mib = mem.0.strip_suffix("Mi").expect("a memory limit in Mi");
            flag("--memory", &format!("{mib}m"));
        }
        if let Some(cpu) = limits.and_then(|l| l.get("cpu")) {
            flag("--cpus", &cpu.0);
        }
        for e in c.env.iter().flatten() {
            flag(
                "--env",
                &format!("{}={}", e.name, e.value.as_deref().unwrap_or("")),
            );
        }
        let volumes = pod.volumes.as_deref().unwrap_or_default();
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("volume {} is not declared", m.name));
            let hp = v.host_path.as_ref().expect("hostPath volumes only");
            let src = host_path(v);
            match hp.type_.as_deref() {
                Some("Directory") => assert!(src.is_dir(), "{}: not a directory", src.display()),
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&src).unwrap(),
                other => panic!("hostPath type {other:?} is not translated"),
            }
            let ro = if m.read_only == Some(true) { ":ro" } else { "" };
            flag(
                "--volume",
                &format!("{}:{}{ro}", src.display(), m.mount_path),
            );
        }
        flags
    }
}
