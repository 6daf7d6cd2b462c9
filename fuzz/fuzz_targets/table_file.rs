//! Table files (`--config`): parse and build; errors are fine, panics and hangs are not.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::table_file(data));
