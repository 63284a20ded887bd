//! `cargo fuzz run shm_event`: see `ils_engine::fuzz::shm_event`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ils_engine::fuzz::shm_event(data));
