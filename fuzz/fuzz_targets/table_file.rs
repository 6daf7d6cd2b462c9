//! Table files (`--config`): parse and build; errors are fine, panics and hangs are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = meshrev::config::parse_objects(text);
    let _ = meshrev::table::from_text(text);
});
