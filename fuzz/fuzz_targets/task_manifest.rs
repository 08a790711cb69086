#![no_main]
// See tribe::fuzzing::task_manifest for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::task_manifest(data));
