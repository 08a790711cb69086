#![no_main]
// See tribe::fuzzing::gossip_delta for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::gossip_delta(data));
