//! cgroup paths as the kernel reports them: any path names a workload or nothing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = observer::enrich::cgroup::parse(path);
    }
});
