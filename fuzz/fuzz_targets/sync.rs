#![no_main]
// See tribe::fuzzing::sync for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::sync(data));
