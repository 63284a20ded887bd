//! `ils-plot`: plots of a `bench/run` ramp (pps, CPU and p99 latency against viewers, one line
//! per server) from its `load.jsonl`.

use std::path::PathBuf;

use clap::Parser;

/// Draw pps-vs-viewers.svg, cpu-vs-viewers.svg and p99-vs-viewers.svg from bench/run's
/// load.jsonl (one JSON object per ramp step; a "server" field names the series, default ils).
#[derive(Parser, Debug)]
#[command(name = "ils-plot", version)]
struct Cli {
    /// bench/run's load.jsonl.
    input: PathBuf,
    /// Directory for the SVG files [the input's directory].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let c = Cli::parse();
    let text = std::fs::read_to_string(&c.input)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", c.input.display()))?;
    let rows = ils_load::report::parse_ramp(&text)?;
    let dir = c.out.unwrap_or_else(|| {
        c.input
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    for p in ils_load::report::ramp_plots(&dir, &rows)? {
        println!("{}", p.display());
    }
    Ok(())
}
