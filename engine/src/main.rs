//! `ils-engine`: the media data plane process. Usually started by `ils-control`; can run alone
//! for benchmarks and for embedding behind another control process (see docs/shm-contract.md).

fn main() {
    ils_engine::cli::run(std::env::args_os());
}
