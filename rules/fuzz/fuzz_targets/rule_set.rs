#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| verdict_rules::fuzzing::rule_set(data));
