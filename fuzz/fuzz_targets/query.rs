//! The event filters of `/api/v1/events`: any query string is a filter or one named error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let pairs = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")));
    if let Err(e) = observer::store::query::Filter::from_pairs(pairs, 1_700_000_000_000_000_000) {
        assert!(!e.to_string().is_empty());
    }
});
