//! `meshrev inject`'s document reader, walker and YAML writer: any input gives output or an
//! error, never a panic. The output must read back as YAML with one document per input
//! document, and every document that was read must survive a write/read round trip.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::inject_documents(data));
