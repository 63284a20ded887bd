//! `cargo fuzz run rtp`: see `ils_engine::fuzz::rtp`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::rtp(data));
