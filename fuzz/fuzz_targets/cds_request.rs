//! libFuzzer's entry to [`segmentti_fuzz::cds_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segmentti_fuzz::cds_request(data));
