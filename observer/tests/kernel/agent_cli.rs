//! The agent and `check` as an operator meets them: the plan, clean shutdown, and one clear
//! line and a non-zero exit for every bad start.

use std::process::Command;

use super::support::{Agent, OBSERVER, require_bpf};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(OBSERVER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_plan_and_offsets() {
    if !require_bpf() {
        return;
    }
    let (code, out, err) = run(&["check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for purpose in ["state", "reset_reason", "reads"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(purpose))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(!line.contains("unavailable"), "{line}");
    }
    assert!(out.contains("tcp_sock.copied_seq"), "{out}");
    assert!(out.contains("OK: required hooks attached"), "{out}");
}

#[test]
fn a_refused_required_hook_fails_check_and_agent() {
    if !require_bpf() {
        return;
    }
    // kprobes serve no required purpose: allowing only them refuses `state`.
    let (code, out, _) = run(&["check", "--hook-types", "kprobe"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL: required hook state could not be attached"),
        "{out}"
    );
    let (code, _, err) = run(&["agent", "--hook-types", "kprobe"]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("observer:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("required hook state could not be attached"),
        "{err}"
    );
}

#[test]
fn missing_btf_is_one_clear_line() {
    if !require_bpf() {
        return;
    }
    let (code, out, err) = run(&["agent", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("observer: error: reading BTF from /nonexistent/vmlinux: "),
        "{err}"
    );
}

#[test]
fn not_root_is_one_clear_line() {
    if !require_bpf() {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            OBSERVER,
            "check",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("loading eBPF programs needs CAP_SYS_ADMIN"),
        "{err}"
    );
}

#[test]
fn bad_flags_exit_64() {
    let (code, _, err) = run(&["agent", "--hook-types", "fentry"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("unknown hook type \"fentry\""), "{err}");
    let (code, _, err) = run(&["agent", "--hook-types", "tp_btf,tp_btf"]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(
        err.trim(),
        "observer: invalid --hook-types: tp_btf is listed twice"
    );
}

#[test]
fn bad_listener_flags_are_one_line() {
    let (code, _, err) = run(&["agent", "--http-max-requests", "0"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--http-max-requests"), "{err}");
    let (code, _, err) = run(&["agent", "--metrics-listen", "9465"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
}

#[test]
fn the_metrics_listener_keeps_the_history_off_it() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = agent
        .metrics_url
        .clone()
        .expect("metrics_listen in the ready line");
    let get = |url: &str| match ureq::get(url).call() {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(code)) => code,
        Err(e) => panic!("{url}: {e}"),
    };
    assert_eq!(get(&format!("{metrics}/metrics")), 200);
    assert_eq!(get(&format!("{metrics}/readyz")), 200);
    assert_eq!(get(&format!("{metrics}/api/v1/events")), 404);
    assert_eq!(get(&format!("{}/api/v1/events", agent.url)), 200);
    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn sigterm_detaches_and_exits_cleanly() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("detaching probes") && log.contains("signal=\"SIGTERM\""),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    for purpose in ["state", "reset_reason", "reads"] {
        assert!(
            log.contains(&format!("purpose=\"{purpose}\"")),
            "plan logged: {log}"
        );
    }
}
