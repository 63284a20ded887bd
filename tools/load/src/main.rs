//! `ils-load` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ils_load::{RunConfig, Scenario, TargetKind};

/// Simulated WebRTC publishers and viewers (WHIP/WHEP, ICE, DTLS, SRTP) that measure an SFU's
/// added latency, loss and CPU cost.
#[derive(Parser, Debug)]
#[command(name = "ils-load", version)]
struct Cli {
    /// Server API and base URL: `ils` (ils-control; tokens from --secret/ILS_SECRET, --token or its
    /// --dev endpoint), `whip-whep` (any WHIP/WHEP server; tokens from flags) or `janus` (Janus
    /// 1.1 videoroom over its HTTP API, URL http://HOST:PORT/janus; bench/peers/janus/start.sh).
    #[arg(long, value_enum, default_value = "ils")]
    target: TargetKind,
    /// Server base URL.
    #[arg(default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Scenario: audio (1 → N audio), ils (1 host audio + 3-layer VP8 simulcast → N), stage
    /// (--hosts hosts → N), audience (N viewers + producer + host in one ILS session over /ws:
    /// reactions, chat, a poll; needs --secret), conference (--hosts K all-to-all over /ws: each
    /// publishes, goes on stage and receives the others through slots; needs --secret).
    #[arg(long, value_enum, default_value = "audio")]
    scenario: Scenario,
    /// Room name.
    #[arg(long, default_value = "load")]
    room: String,
    /// Viewers.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Hosts in the stage scenario.
    #[arg(long, default_value_t = 25)]
    hosts: usize,
    /// Viewer joins per second.
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// Steady-state seconds measured after every viewer joined.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Publisher keyframe interval, seconds.
    #[arg(long, default_value_t = 3)]
    keyframe_interval: u64,
    /// Viewer transport-cc feedback interval, ms (0: off).
    #[arg(long, default_value_t = 100)]
    twcc_interval_ms: u64,
    /// Pin the I/O thread to this core.
    #[arg(long)]
    load_core: Option<usize>,
    /// ils-control's pid (its CPU, and its engine child's, are reported).
    #[arg(long)]
    control_pid: Option<u32>,
    /// Engine pid (default: control's child whose command line contains "engine").
    #[arg(long)]
    engine_pid: Option<u32>,
    /// Token secret of ils-control (tokens minted locally).
    #[arg(long, env = "ILS_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Bearer token for both publishing and viewing.
    #[arg(long)]
    token: Option<String>,
    /// Bearer token for publishing.
    #[arg(long)]
    publish_token: Option<String>,
    /// Bearer token for viewing.
    #[arg(long)]
    view_token: Option<String>,
    /// Directory for result.json, summary.md and latency-cdf.svg.
    #[arg(long, default_value = "ils-load-out")]
    out: PathBuf,
    /// Keep the sessions (no DELETE at the end).
    #[arg(long)]
    no_delete: bool,
    /// Simulcast layer video viewers ask for: 0 low, 1 mid, 2 high (WHEP `?layer=`, Janus
    /// `substream`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    layer: u8,
    /// Audience scenario: mean seconds between one viewer's reactions (Poisson).
    #[arg(long, default_value_t = 10.0)]
    reaction_every_s: f64,
    /// Audience scenario: mean seconds between one viewer's chat messages (Poisson).
    #[arg(long, default_value_t = 60.0)]
    chat_every_s: f64,
    /// Percent of publishers' video packets lost on the uplink (dropped before sending; the
    /// server's NACKs are answered from the publisher's history, like a browser), 0..=50.
    #[arg(long, default_value_t = 0.0)]
    publisher_loss: f64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let c = Cli::parse();
    if !(0.0..=50.0).contains(&c.publisher_loss) {
        anyhow::bail!(
            "--publisher-loss {}: must be a percentage from 0 to 50",
            c.publisher_loss
        );
    }
    let cfg = RunConfig {
        target: c.target,
        url: c.url,
        room: c.room,
        scenario: c.scenario,
        viewers: c.viewers,
        hosts: c.hosts,
        join_rate: c.join_rate,
        duration: Duration::from_secs(c.duration),
        keyframe_interval: Duration::from_secs(c.keyframe_interval.max(1)),
        twcc_interval: (c.twcc_interval_ms > 0).then(|| Duration::from_millis(c.twcc_interval_ms)),
        load_core: c.load_core,
        control_pid: c.control_pid,
        engine_pid: c.engine_pid,
        secret: c.secret,
        token: c.token,
        publish_token: c.publish_token,
        view_token: c.view_token,
        out_dir: Some(c.out.clone()),
        progress: !c.quiet,
        delete: !c.no_delete,
        layer: c.layer,
        reaction_every_s: c.reaction_every_s,
        chat_every_s: c.chat_every_s,
        publisher_loss: (c.publisher_loss / 100.0).clamp(0.0, 0.5),
    };
    if cfg.scenario == Scenario::Audience {
        let r = ils_load::ws::run_audience(&cfg)?;
        print!("{}", ils_load::ws::markdown(&r));
        eprintln!("wrote {}/result.json, summary.md", c.out.display());
        return Ok(());
    }
    let (r, _) = ils_load::run(&cfg)?;
    print!("{}", ils_load::report::markdown(&r));
    eprintln!(
        "wrote {}/result.json, summary.md, latency-cdf.svg",
        c.out.display()
    );
    Ok(())
}
