//! `cargo fuzz run srtp`: see `ils_engine::fuzz::srtp`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::srtp(data));
