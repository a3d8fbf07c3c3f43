#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| verdict_engine::fuzzing::admin_request(data));
