#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| verdict_engine::fuzzing::log_segment(data));
