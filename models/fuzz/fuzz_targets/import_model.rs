#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| verdict_models::fuzzing::import_model(data));
