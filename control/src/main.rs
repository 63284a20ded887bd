//! `ils-control`: the whole server in one command. Starts (or re-attaches to) the media engine,
//! serves WHIP/WHEP, the demo page, room stats and metrics.
//!
//! `ils-control engine ...` runs the engine itself (control spawns its own binary that way as a
//! separate process, so one build gives both); `ils-control token ...` prints a join token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use ils_control::auth::Secret;
use ils_control::config::{self, Cli, CliCommand, Settings};
use ils_control::dtls::{DtlsDriver, WebrtcDtls};
use ils_control::engine_link::{EngineConfig, EngineLink, LinkEvent};
use ils_control::http::{self, App};
use ils_control::room::Rooms;
use ils_shm::{Command, Event};
use tokio::sync::mpsc::UnboundedReceiver;

fn main() {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "engine") {
        argv.remove(1);
        argv[0] = "ils-engine".into();
        ils_engine::cli::run(argv);
        return;
    }
    let cli = Cli::parse();
    let settings = match config::load(&cli.args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ils-control: {e}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Some(CliCommand::Token {
            room,
            role,
            identity,
            name,
            grants,
            ttl,
        }) => token(
            &settings,
            &room,
            &role,
            identity.as_deref(),
            name.as_deref(),
            grants.as_deref(),
            &ttl,
        ),
        None => serve(settings),
    };
    if let Err(e) = result {
        eprintln!("ils-control: {e:#}");
        std::process::exit(1);
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(
    s: &Settings,
    room: &str,
    role: &str,
    identity: Option<&str>,
    name: Option<&str>,
    grants: Option<&str>,
    ttl: &str,
) -> anyhow::Result<()> {
    println!(
        "{}",
        config::token_command_ext(s, room, role, identity, name, grants, ttl, now_unix())?
    );
    Ok(())
}

/// Read the engine's tables back (control restart): transports still alive, by id.
async fn engine_transports(
    link: &EngineLink,
    rx: &mut UnboundedReceiver<LinkEvent>,
) -> Vec<(u32, usize)> {
    let mut live = Vec::new();
    if link.broadcast(&Command::DumpState).is_err() {
        return live;
    }
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while done < link.shards() && Instant::now() < deadline {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await else {
            continue;
        };
        if let LinkEvent::Event(o) = ev {
            match o.event() {
                Some(Event::StateTransport { transport, .. }) => live.push((transport, o.shard)),
                Some(Event::DumpDone { .. }) => done += 1,
                _ => {}
            }
        }
    }
    live
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ILS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve_async(settings))
}

async fn serve_async(settings: Settings) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "create data dir {} (choose another with --data-dir)",
            data_dir.display()
        )
    })?;
    let secret = Secret::load_or_create(&data_dir, settings.secret.as_deref())
        .with_context(|| format!("token secret in {}", data_dir.display()))?;
    let dtls: Arc<dyn DtlsDriver> = Arc::new(WebrtcDtls::load_or_create(&data_dir)?);
    let exe = std::env::current_exe().context("locate the ils-control binary")?;
    let (bin, prefix) = match &settings.engine_bin {
        Some(b) => (b.clone(), Vec::new()),
        None => (exe, vec!["engine".to_string()]),
    };
    let engine_cfg = EngineConfig {
        bin,
        args_prefix: prefix,
        socket: settings
            .engine_socket
            .clone()
            .unwrap_or_else(|| data_dir.join("engine.sock")),
        cores: settings.cores,
        media_ip: settings.media_ip,
        ports: settings.ports,
        backend: settings.backend.clone(),
        consent_timeout_secs: settings.consent_timeout_secs,
    };
    let (link, mut rx) = EngineLink::start(engine_cfg).await?;
    // Reconcile with what the engine still runs (a restarted control keeps media flowing).
    let live = engine_transports(&link, &mut rx).await;
    let saved = std::fs::read_to_string(data_dir.join("state.json")).unwrap_or_default();
    let live_ids: Vec<u32> = live.iter().map(|(t, _)| *t).collect();
    let (rooms, cleanup) = Rooms::restore(&saved, link.shards(), &live_ids);
    let kept = rooms.sessions().count();
    let app = Arc::new(App {
        settings: settings.clone(),
        secret,
        dtls,
        link: link.clone(),
        rooms: tokio::sync::Mutex::new(rooms),
        dtls_inbound: Default::default(),
        stats: Default::default(),
        counters: Default::default(),
        ils: Default::default(),
        persist_wake: Default::default(),
    });
    app.apply(cleanup);
    {
        // transports the engine has but no saved session knows about
        let rooms = app.rooms.lock().await;
        for (t, shard) in &live {
            if rooms.by_transport(*t).is_none() {
                let _ = link.send(*shard, &Command::RemoveTransport { transport: *t });
            }
        }
        app.persist_now(&rooms);
    }
    tokio::spawn(ils_control::http::persist_loop(app.clone()));
    if !live.is_empty() {
        tracing::info!(
            sessions = kept,
            "re-attached to a running engine; sessions restored"
        );
    }
    tokio::spawn(http::run_events(Arc::clone(&app), rx));
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| {
            format!(
                "bind HTTP on {} (choose another with --http)",
                settings.http
            )
        })?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("ils-control: demo page    http://{addr}/");
    println!("ils-control: WHIP (publish) POST http://{addr}/whip/{{room}}   WHEP (watch) POST http://{addr}/whep/{{room}}");
    println!("ils-control: rooms http://{addr}/api/rooms   metrics http://{addr}/metrics");
    println!(
        "ils-control: media on {} UDP ports {}..{} ({} engine shards){}",
        settings.announce_ip.unwrap_or(settings.media_ip),
        link.port(0),
        link.port(link.shards().saturating_sub(1)),
        link.shards(),
        if settings.dev {
            "; dev mode: demo tokens at /api/dev/token"
        } else {
            ""
        }
    );
    let router = http::router(Arc::clone(&app));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Graceful stop (Ctrl-C / SIGTERM) stops the engine too; a crash or SIGKILL leaves it
    // running so a restarted control can re-attach without interrupting media.
    if let Err(e) = link.stop_engine() {
        tracing::warn!("stopping the engine: {e:#}");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
