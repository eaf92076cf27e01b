use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("observer").chain(args.iter().copied()))
}

/// The message clap refuses `args` with.
fn refusal(args: &[&str]) -> String {
    parse(args).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let Command::Agent(a) = parse(&["agent"]).unwrap().command else {
        panic!("not agent")
    };
    assert_eq!(a.probes.hook_types, HookType::ALL);
    assert_eq!(a.log_events, LogEvents::Stdout);
    assert_eq!(a.close_wait_threshold, std::time::Duration::from_secs(30));
    assert_eq!(a.probes.pin_dir, PathBuf::from("/sys/fs/bpf/observer"));
    assert!(a.probes.skip_probes.is_empty());
    assert_eq!(a.probes.read_hook, ReadHook::OnDemand);
    assert!(a.validate().is_ok());
}

#[test]
fn read_hook_takes_always_and_refuses_others() {
    let Command::Agent(a) = parse(&["agent", "--read-hook", "always"]).unwrap().command else {
        panic!("not agent")
    };
    assert_eq!(a.probes.read_hook, ReadHook::Always);
    let e = refusal(&["agent", "--read-hook", "sometimes"]);
    assert!(
        e.contains("invalid value 'sometimes' for '--read-hook") && e.contains("on-demand"),
        "{e}"
    );
}

#[test]
fn bad_values_are_named() {
    let e = refusal(&["agent", "--hook-types", "tp_btf,fentry"]);
    assert!(e.contains("tracepoint, fexit or kprobe"), "{e}");
    assert!(e.contains("unknown hook type \"fentry\""), "{e}");
    let e = refusal(&["agent", "--skip-probes", "reads,state"]);
    assert!(
        e.contains("invalid value 'state' for '--skip-probes"),
        "{e}"
    );
    let e = refusal(&["agent", "--log-events", "file"]);
    assert!(e.contains("invalid value 'file'"), "{e}");
    let e = refusal(&["agent", "--close-wait-threshold", "soon"]);
    assert!(
        e.contains("invalid value 'soon' for '--close-wait-threshold"),
        "{e}"
    );
    let Command::Agent(a) = parse(&["agent", "--close-wait-threshold", "0s"])
        .unwrap()
        .command
    else {
        panic!("not agent")
    };
    assert_eq!(
        a.validate().unwrap_err().to_string(),
        "invalid --close-wait-threshold: it must be longer than 0s"
    );
    let Command::Check(p) = parse(&["check", "--hook-types", "tracepoint,tracepoint"])
        .unwrap()
        .command
    else {
        panic!("not check")
    };
    assert_eq!(
        p.validate().unwrap_err().to_string(),
        "invalid --hook-types: tracepoint is listed twice"
    );
    for (flag, value, why) in [
        (
            "--port-pressure-ratio",
            "1.5",
            "it must be above 0 and at most 1",
        ),
        ("--churn-rate", "0", "it must be a number above 0"),
        ("--explosion-threshold", "0", "it must be at least 1"),
        ("--pool-interval", "10ms", "it must be at least 100ms"),
        (
            "--socket-slots",
            "100000",
            "it must be a power of two from 2 to 16777216",
        ),
        (
            "--socket-slots",
            "1",
            "it must be a power of two from 2 to 16777216",
        ),
    ] {
        let Command::Agent(a) = parse(&["agent", flag, value]).unwrap().command else {
            panic!("not agent")
        };
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            format!("invalid {flag}: {why}")
        );
    }
}
