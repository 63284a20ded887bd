//! `cargo fuzz run rtcp`: see `ils_engine::fuzz::rtcp`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::rtcp(data));
