//! The manifests an operator applies: every core resource parses into the official Kubernetes
//! types (k8s-openapi) and back without losing a field; the kustomization lists every file;
//! the alert rules are valid PromQL (`promtool check rules`); `checkov` finds no failed check
//! that the manifest does not justify. promtool and checkov are installed by
//! `cargo xtask test`; without them these checks skip, except under `OBSERVER_REQUIRE_BPF=1`
//! (CI), where every tool is required.
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
    },
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::Value;

/// `deploy/`, canonical: checkov scans nothing when given a path through `..`.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .unwrap()
}

fn yaml(file: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(deploy().join(file)).unwrap()).unwrap()
}

/// Parses `file` as `T` and checks that nothing was dropped on the way.
fn round_trip<T: DeserializeOwned + Serialize>(file: &str) {
    let original = yaml(file);
    let typed: T =
        serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        back, original,
        "{file} loses or changes fields through the official types"
    );
}

#[test]
fn core_resources_are_lossless_official_types() {
    round_trip::<Namespace>("namespace.yaml");
    round_trip::<ServiceAccount>("serviceaccount.yaml");
    round_trip::<DaemonSet>("daemonset.yaml");
    round_trip::<Service>("service.yaml");
    round_trip::<NetworkPolicy>("networkpolicy.yaml");
}

#[test]
fn the_daemonset_grants_only_what_it_needs() {
    let ds = yaml("daemonset.yaml");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(added, ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    let text = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    for cap in added {
        let commented = text
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0].trim_start().starts_with('#') && w[1].trim() == format!("- {cap}"));
        assert!(commented, "capability {cap} has a comment saying why");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for needed in [
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
        "/var/lib/observer",
    ] {
        assert!(mounts.contains(&needed), "mount {needed}");
    }
}

#[test]
fn only_metrics_and_probes_leave_the_node_and_only_to_prometheus() {
    let ds = yaml("daemonset.yaml");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} in {args:?}"))
            .parse::<std::net::SocketAddr>()
            .unwrap()
    };
    assert!(
        flag("listen").ip().is_loopback(),
        "the API stays in the pod"
    );
    let metrics = flag("metrics-listen");
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], Value::Null);
    let port = &c["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["containerPort"], u64::from(metrics.port()));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let svc = yaml("service.yaml");
    assert_eq!(svc["spec"]["ports"][0]["port"], u64::from(metrics.port()));
    let np = yaml("networkpolicy.yaml");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "one rule: {ingress:?}");
    let from = ingress[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": metrics.port(), "protocol": "TCP"}])
    );
    assert_eq!(np["spec"]["egress"], serde_json::json!([]));
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = yaml("kustomization.yaml");
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    listed.extend(
        k["configMapGenerator"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned()),
    );
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let ext = Path::new(n).extension().and_then(|e| e.to_str());
            n != "kustomization.yaml" && matches!(ext, Some("yaml" | "json"))
        })
        .collect();
    files.sort();
    assert_eq!(listed, files);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
}

/// `name` on PATH, or where `cargo xtask test` installs it; `None` (printed) when absent,
/// a failure under `OBSERVER_REQUIRE_BPF=1`.
fn tool(name: &str, installed: &[&str]) -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let found = installed
        .iter()
        .map(|p| target.join(p))
        .find(|p| p.exists())
        .or_else(|| {
            Command::new(name)
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from(name))
        });
    if found.is_none() {
        assert!(
            std::env::var_os("OBSERVER_REQUIRE_BPF").is_none(),
            "{name} is required (cargo xtask test installs it)"
        );
        eprintln!("skipped: {name} is not installed (cargo xtask test installs it)");
    }
    found
}

#[test]
fn alert_rules_are_valid_promql() {
    let Some(promtool) = tool("promtool", &[]) else {
        return;
    };
    let rule = yaml("prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for needed in [
        "ObserverRstOnClose",
        "ObserverResetsReceived",
        "ObserverCloseWaitLeak",
        "ObserverCloseWaitOld",
        "ObserverEventsLost",
        "ObserverProbeUnavailable",
        "ObserverDown",
    ] {
        assert!(alerts.contains(&needed), "alert {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn checkov_finds_nothing_unjustified() {
    let Some(checkov) = tool("checkov", &["tools/checkov/bin/checkov"]) else {
        return;
    };
    let out = Command::new(checkov)
        .args([
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "--skip-download",
            "--output",
            "json",
            "--directory",
        ])
        .arg(deploy())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let failed = &report["results"]["failed_checks"];
    let failed: Vec<String> = failed
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{} {} ({})", c["check_id"], c["check_name"], c["resource"]))
        .collect();
    assert!(
        failed.is_empty(),
        "checkov failures not justified in the manifests:\n{}",
        failed.join("\n")
    );
    assert!(
        report["summary"]["passed"].as_u64().unwrap_or(0) > 20,
        "checkov really ran: {}",
        report["summary"]
    );
}
