#![no_main]
// See tribe::fuzzing::datagram for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tribe::fuzzing::datagram(data));
