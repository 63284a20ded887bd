//! `ils-control`: signaling, DTLS, rooms and roles (issue 3, not built yet).
//!
//! Today it only documents itself; the engine runs standalone (`ils-engine`), driven over the
//! shared-memory contract in `docs/shm-contract.md`.

use clap::Parser;

/// ils control process (signaling, WHIP/WHEP, DTLS, rooms). Not implemented yet: see issue 3.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!(
        "ils-control is not implemented yet (issue 3). Start the media engine with `cargo run --release --bin ils-engine`."
    );
    std::process::exit(2);
}
