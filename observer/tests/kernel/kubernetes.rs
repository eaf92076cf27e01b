//! Workload attribution on the real kernel: the kubelet's cgroup layout (systemd driver,
//! burstable QoS, a containerd scope) built under the cgroup2 mount, the matching
//! `/var/log/pods` and `/var/log/containers` entries in a temp root, and a real process moved
//! into that cgroup causing an RST-on-close. Its event names the pod, namespace, container and
//! container id; the same client outside the cgroup is the host. The reset the server
//! receives names the pod that caused it.

use std::{io::Write as _, net::TcpListener};

use serde_json::Value;

use super::support::{Agent, FakePod, client, events, in_netns, require_bpf};

#[test]
fn a_process_in_a_pod_cgroup_is_named_by_pod_namespace_and_container() {
    if !require_bpf() {
        return;
    }
    let pod = FakePod::new();
    let pod_logs = pod.logs.path().join("pods");
    let container_logs = pod.logs.path().join("containers");
    let agent = Agent::start(&[
        "--pod-logs",
        pod_logs.to_str().unwrap(),
        "--container-logs",
        container_logs.to_str().unwrap(),
    ]);
    let scope = pod.scope.clone();
    let (ns, in_pod, on_host) = in_netns(move |ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut pids = Vec::new();
        for cgroup in [Some(&scope), None] {
            let mut child = client(port, cgroup);
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&[1u8; 5000]).unwrap();
            assert!(child.wait().unwrap().success());
            pids.push(child.id());
        }
        (ns, pids[0], pids[1])
    });
    let evs = events(&agent, ns, 2);
    let of = |pid: u32| -> &Value {
        evs.iter()
            .find(|e| e["pid"] == pid)
            .unwrap_or_else(|| panic!("no event for {pid}: {evs:#?}"))
    };
    let e = of(in_pod);
    assert_eq!(e["kind"], "rst_on_close");
    assert_eq!(e["namespace"], "shop", "{e}");
    assert_eq!(e["pod"], "web-0");
    assert_eq!(e["container"], "app");
    assert_eq!(e["container_id"], pod.id.as_str());
    let h = of(on_host);
    assert_eq!(
        (
            h["pod"].clone(),
            h["namespace"].clone(),
            h["container_id"].clone()
        ),
        (Value::Null, Value::Null, Value::Null)
    );
    assert_eq!(h["comm"], "python3", "the host, named by its comm");
    // This process, the server, received the pod's reset: it names the pod that caused it.
    let resets = agent.resets(
        ns,
        2,
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(500),
    );
    let from_pod = resets
        .iter()
        .find(|r| r["peer_pid"] == in_pod)
        .unwrap_or_else(|| panic!("no reset linked to {in_pod}: {resets:#?}"));
    assert_eq!(from_pod["pid"], std::process::id(), "{from_pod}");
    assert_eq!(
        (
            &from_pod["peer_namespace"],
            &from_pod["peer_pod"],
            &from_pod["peer_container"]
        ),
        (
            &Value::from("shop"),
            &Value::from("web-0"),
            &Value::from("app")
        )
    );
    let hint = from_pod["hint"].as_str().unwrap();
    assert!(
        hint.ends_with(&format!(
            "pid {in_pod} (python3) in pod shop/web-0 closed with 4990 unread bytes"
        )),
        "{hint}"
    );
    let metrics = ureq::Agent::new_with_config(ureq::Agent::config_builder().build())
        .get(&format!("{}/metrics", agent.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "observer_rst_on_close_total{namespace=\"shop\",pod=\"web-0\",container=\"app\",comm=\"python3\""
        )),
        "series by workload: {metrics}"
    );
}
