//! libFuzzer's entry to [`segmentti_fuzz::mapping`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segmentti_fuzz::mapping(data));
