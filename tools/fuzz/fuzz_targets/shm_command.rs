//! `cargo fuzz run shm_command`: see `ils_engine::fuzz::shm_command`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::shm_command(data));
