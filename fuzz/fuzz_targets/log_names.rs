//! The kubelet's pod directory and container log names: parsed into parts of the name, or not.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((ns, pod, uid)) = observer::enrich::pod_dir(name) {
        assert_eq!(format!("{ns}_{pod}_{uid}"), name);
    }
    if let Some((id, container)) = observer::enrich::container_log(name) {
        assert!(name.ends_with(&format!("{id}.log")) && name.contains(container));
    }
});
