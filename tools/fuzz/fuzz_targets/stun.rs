//! `cargo fuzz run stun`: see `ils_engine::fuzz::stun`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::stun(data));
