#![no_main]
// See tribe::fuzzing::rpc_client for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::rpc_client(data));
