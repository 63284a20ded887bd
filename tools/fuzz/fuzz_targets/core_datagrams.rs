//! `cargo fuzz run core_datagrams`: see `ils_engine::fuzz::core_datagrams`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::core_datagrams(data));
