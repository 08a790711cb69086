#![no_main]
// See tribe::fuzzing::admin_body for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::admin_body(data));
