//! libFuzzer's entry to [`segmentti_fuzz::bundle`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segmentti_fuzz::bundle(data));
