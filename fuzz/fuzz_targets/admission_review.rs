//! The `/inject` handler's work on one request body: `admission::review` with the embedded
//! table. The reply must always be a well-formed AdmissionReview; a patch, when there is
//! one, must be valid base64 of a JSON Patch that applies to the request's pod.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::admission_review(data));
