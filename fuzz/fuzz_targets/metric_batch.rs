#![no_main]
// See tribe::fuzzing::metric_batch for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::metric_batch(data));
