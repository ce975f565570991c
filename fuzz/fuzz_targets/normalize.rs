//! The URL normalizer on arbitrary bytes: never panics, and what it returns normalizes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use urlfleet_shared::url::{NormalizedUrl, printable, redact};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let _ = redact(input);
    assert!(!printable(input).chars().any(char::is_control));
    for strip in [false, true] {
        if let Ok(u) = NormalizedUrl::parse_with(input, strip) {
            let again = NormalizedUrl::parse_with(u.as_str(), strip).expect("a normalized URL parses");
            assert_eq!(again.as_str(), u.as_str());
        }
    }
});
