//! Settings: one struct, four sources. Precedence: command-line flag > `ILS_*` environment
//! variable > TOML config file (`--config FILE` / `ILS_CONFIG`) > embedded default.
//!
//! * [`Cli`] / [`SettingsArgs`]: clap derive; every [`Settings`] field has a flag, each flag names
//!   its environment variable (`--help` shows both).
//! * [`load`] merges the sources and validates the result; every [`ConfigError`] names where the
//!   bad value came from and what to do about it.
//! * The file's keys are the [`Settings`] field names (`http`, `media_ip`, `ports`, ...); unknown
//!   keys are errors that name the key.
//!
//! Environment variable names match `ils-engine`'s where they mean the same thing (`ILS_PORTS`,
//! `ILS_CORES`, `ILS_MEDIA_IP`, `ILS_BACKEND`, `ILS_CONSENT_TIMEOUT`), so one environment
//! configures both processes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::auth::{self, Role, Secret};

/// Lowest UDP media base port. Default 1024: keeps ils off privileged ports.
pub const MIN_MEDIA_PORT: u16 = 1024;
/// Shortest accepted configured secret, in bytes. Default 16: a shorter HMAC key can be brute
/// forced from one captured token.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest ICE consent timeout, seconds. Default 3600: bounds how long a vanished client's
/// transport (and its engine rows) lives.
pub const MAX_CONSENT_TIMEOUT_SECS: u64 = 3600;
/// Largest `resume_grace_secs`: a detached `/ws` participant (socket dropped, media kept) is
/// held at most 10 minutes. Its memory is the participant's entry, counted against the
/// session's participant limit like a connected one.
pub const MAX_RESUME_GRACE_SECS: u64 = 600;
/// Smallest HTTP body limit, bytes. Default 1024: below this no browser offer fits.
pub const MIN_BODY_BYTES: usize = 1024;
/// Largest HTTP body limit, bytes. Default 16 MiB: bounds memory per in-flight request.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest config file read, bytes. Default 1 MiB: bounds memory if `--config` names a huge file.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// Longest duration [`parse_duration`] accepts. Default 10 years (3650 d): bounds token lifetimes
/// and keeps `exp` arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
/// The I/O backends `ils-engine` understands.
pub const BACKENDS: [&str; 3] = ["auto", "io-uring", "mmsg"];
/// File name of the `ils-engine` binary looked up next to `ils-control` and on `PATH`.
pub const ENGINE_BIN_NAME: &str = "ils-engine";

/// Every setting of the control process (and what it passes to the engine).
///
/// As a TOML file: any subset of these keys, e.g. `ports = 41000` or `http = "0.0.0.0:8080"`.
/// `Debug` prints `secret` as `<redacted>`.
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// HTTP listen address (WHIP/WHEP, API, demo page). Default 127.0.0.1:8080.
    pub http: SocketAddr,
    /// Address the engine's UDP media sockets bind to. Default 127.0.0.1.
    pub media_ip: IpAddr,
    /// Address advertised in ICE candidates. Default: `media_ip` (required when that is 0.0.0.0/::).
    pub announce_ip: Option<IpAddr>,
    /// UDP port of engine shard 0; shard i uses `ports + i`. Default 40000.
    pub ports: u16,
    /// Engine shards (one pinned thread and one port each). 0 = all cores. Default 0.
    pub cores: usize,
    /// Directory for the generated secret, DTLS certificate and state. Default ./ils-data.
    pub data_dir: PathBuf,
    /// Serve `/api/dev/token` (tokens for anyone, for the demo page). Default false.
    pub dev: bool,
    /// Token signing secret. Default: generated and stored in `data_dir/secret`.
    pub secret: Option<String>,
    /// Path of `ils-engine`. Default: next to the current executable, else on `PATH`.
    pub engine_bin: Option<PathBuf>,
    /// Unix socket for attaching to the engine. Default `data_dir/engine.sock`.
    pub engine_socket: Option<PathBuf>,
    /// Engine I/O backend: "auto", "io-uring" or "mmsg". Default "auto".
    pub backend: String,
    /// Seconds without ICE consent before a transport is dead. Default 30 (RFC 7675).
    pub consent_timeout_secs: u64,
    /// HTTP request body limit in bytes (SDP offers). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Seconds a `/ws` participant whose socket dropped (no close frame) keeps its place and
    /// media, waiting for `hello{resume:true}`. 0 = leave at once. Default 20.
    pub resume_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            announce_ip: None,
            ports: 40000,
            cores: 0,
            data_dir: PathBuf::from("./ils-data"),
            dev: false,
            secret: None,
            engine_bin: None,
            engine_socket: None,
            backend: "auto".to_owned(),
            consent_timeout_secs: 30,
            max_body_bytes: 64 * 1024,
            resume_grace_secs: 20,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("http", &self.http)
            .field("media_ip", &self.media_ip)
            .field("announce_ip", &self.announce_ip)
            .field("ports", &self.ports)
            .field("cores", &self.cores)
            .field("data_dir", &self.data_dir)
            .field("dev", &self.dev)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("engine_bin", &self.engine_bin)
            .field("engine_socket", &self.engine_socket)
            .field("backend", &self.backend)
            .field("consent_timeout_secs", &self.consent_timeout_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("resume_grace_secs", &self.resume_grace_secs)
            .finish()
    }
}

impl Settings {
    /// The address put in ICE candidates: `announce_ip`, else `media_ip`.
    pub fn advertised_ip(&self) -> IpAddr {
        self.announce_ip.unwrap_or(self.media_ip)
    }

    /// The engine attach socket: `engine_socket`, else `data_dir/engine.sock`.
    pub fn engine_socket_path(&self) -> PathBuf {
        self.engine_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("engine.sock"))
    }

    /// Number of engine shards: `cores`, or (0) `available` capped at [`ils_shm::MAX_SHARDS`].
    pub fn shard_count(&self, available: usize) -> usize {
        if self.cores == 0 {
            available.clamp(1, ils_shm::MAX_SHARDS)
        } else {
            self.cores
        }
    }

    /// Number of engine shards on this machine (see [`Settings::shard_count`]).
    pub fn shards(&self) -> usize {
        self.shard_count(available_cores())
    }

    /// UDP port of `shard`, or `None` if it would exceed 65535.
    pub fn shard_port(&self, shard: usize) -> Option<u16> {
        u16::try_from(usize::from(self.ports).checked_add(shard)?).ok()
    }

    /// Consent timeout as a [`Duration`].
    pub fn consent_timeout(&self) -> Duration {
        Duration::from_secs(self.consent_timeout_secs)
    }

    /// The `ils-engine` binary: `engine_bin` if set, else `ils-engine` next to the current
    /// executable, else the first `ils-engine` on `PATH`.
    pub fn resolve_engine_bin(&self) -> Result<PathBuf, ConfigError> {
        let exe = std::env::current_exe().ok();
        let path = std::env::var_os("PATH");
        self.resolve_engine_bin_from(exe.as_deref(), path.as_deref())
    }

    /// [`Settings::resolve_engine_bin`] with the current executable and `PATH` as parameters.
    pub fn resolve_engine_bin_from(
        &self,
        current_exe: Option<&Path>,
        path_var: Option<&OsStr>,
    ) -> Result<PathBuf, ConfigError> {
        if let Some(p) = &self.engine_bin {
            if p.is_file() {
                return Ok(p.clone());
            }
            return Err(ConfigError::Invalid(format!(
                "engine_bin {}: no such file; build it with `cargo build --release --bin ils-engine` or fix --engine-bin / ILS_ENGINE_BIN",
                p.display()
            )));
        }
        if let Some(dir) = current_exe.and_then(Path::parent) {
            let p = dir.join(ENGINE_BIN_NAME);
            if p.is_file() {
                return Ok(p);
            }
        }
        if let Some(path_var) = path_var {
            for dir in std::env::split_paths(path_var) {
                let p = dir.join(ENGINE_BIN_NAME);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(ConfigError::Invalid(
            "ils-engine not found next to ils-control nor on PATH: build it with `cargo build --release --bin ils-engine` or pass --engine-bin PATH".to_owned(),
        ))
    }
}

/// Cores on this machine (1 if unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Command line of `ils-control`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "ils-control",
    version,
    about = "ils control process: WHIP/WHEP signaling, DTLS, rooms; starts and supervises ils-engine",
    long_about = "ils control process: WHIP/WHEP signaling, DTLS, rooms; starts and supervises ils-engine.\n\n\
        Every setting can come from a flag, an ILS_* environment variable, or a TOML file (--config); \
        precedence is flag > environment > file > default. File keys are the flag names with '_' \
        instead of '-' (consent_timeout_secs for --consent-timeout)."
)]
pub struct Cli {
    /// What to do (default: run the server).
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// Settings.
    #[command(flatten)]
    pub args: SettingsArgs,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CliCommand {
    /// Print a join token signed with the configured secret
    Token {
        /// Room the token is for.
        #[arg(long)]
        room: String,
        /// host | producer | viewer.
        #[arg(long)]
        role: String,
        /// Participant identity (optional).
        #[arg(long)]
        identity: Option<String>,
        /// Display name shown to other participants on /ws (optional, <= 64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated grants: publish, subscribe, chat, admin [default: the role's
        /// defaults: host publish,subscribe,chat; producer all; viewer subscribe,chat].
        #[arg(long)]
        grants: Option<String>,
        /// Lifetime, e.g. 90s, 15m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// Every [`Settings`] field as an optional flag (with its `ILS_*` variable), plus `--config`.
/// Flags are global: they may also follow a subcommand (`ils-control token ... --data-dir D`).
/// `Debug` prints `secret` as `<redacted>`.
#[derive(Clone, Default, PartialEq, clap::Args)]
pub struct SettingsArgs {
    /// TOML config file (keys: the setting names, e.g. `ports = 41000`).
    #[arg(long, value_name = "FILE", env = "ILS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT", env = "ILS_HTTP", global = true)]
    pub http: Option<SocketAddr>,
    /// IP the engine's UDP media sockets bind to [default: 127.0.0.1].
    #[arg(long, value_name = "IP", env = "ILS_MEDIA_IP", global = true)]
    pub media_ip: Option<IpAddr>,
    /// IP advertised to clients in ICE candidates [default: --media-ip]; required when
    /// --media-ip is 0.0.0.0 or ::.
    #[arg(long, value_name = "IP", env = "ILS_ANNOUNCE_IP", global = true)]
    pub announce_ip: Option<IpAddr>,
    /// UDP port of engine shard 0; shard i uses PORT+i [default: 40000; range 1024..=65535-shards+1].
    #[arg(long, value_name = "PORT", env = "ILS_PORTS", global = true)]
    pub ports: Option<u16>,
    /// Engine shards (one pinned thread and UDP port each); 0 = all cores [default: 0].
    #[arg(long, value_name = "N", env = "ILS_CORES", global = true)]
    pub cores: Option<usize>,
    /// Directory for the generated secret, DTLS certificate and state [default: ./ils-data].
    #[arg(long, value_name = "DIR", env = "ILS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Serve /api/dev/token so the demo page can get tokens without auth. Never in production.
    /// `--dev` or `--dev=true|false`; ILS_DEV=1|true|yes|on [default: false].
    #[arg(
        long,
        value_name = "BOOL",
        env = "ILS_DEV",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub dev: Option<bool>,
    /// Token signing secret (>= 16 bytes). Prefer ILS_SECRET or the config file: flags are
    /// visible to other users in `ps` [default: generated, stored in DATA_DIR/secret].
    #[arg(
        long,
        value_name = "SECRET",
        env = "ILS_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub secret: Option<String>,
    /// Path of the ils-engine binary [default: next to ils-control, else on PATH].
    #[arg(long, value_name = "PATH", env = "ILS_ENGINE_BIN", global = true)]
    pub engine_bin: Option<PathBuf>,
    /// Unix socket for attaching to the engine [default: DATA_DIR/engine.sock].
    #[arg(long, value_name = "PATH", env = "ILS_ENGINE_SOCKET", global = true)]
    pub engine_socket: Option<PathBuf>,
    /// Engine I/O backend [default: auto].
    #[arg(
        long,
        value_name = "BACKEND",
        env = "ILS_BACKEND",
        value_parser = BACKENDS,
        global = true
    )]
    pub backend: Option<String>,
    /// Seconds without ICE consent before a transport is dead [default: 30; range 1..=3600].
    /// File key: consent_timeout_secs.
    #[arg(
        long = "consent-timeout",
        alias = "consent-timeout-secs",
        value_name = "SECS",
        env = "ILS_CONSENT_TIMEOUT",
        global = true
    )]
    pub consent_timeout_secs: Option<u64>,
    /// HTTP request body limit in bytes [default: 65536; range 1024..=16777216].
    #[arg(long, value_name = "BYTES", env = "ILS_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,
    /// Seconds a /ws participant whose socket dropped keeps its place and media, waiting to
    /// resume; 0 = leave at once [default: 20; range 0..=600]. File key: resume_grace_secs.
    #[arg(
        long = "resume-grace",
        value_name = "SECS",
        env = "ILS_RESUME_GRACE",
        global = true
    )]
    pub resume_grace_secs: Option<u64>,
}

impl fmt::Debug for SettingsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsArgs")
            .field("config", &self.config)
            .field("http", &self.http)
            .field("media_ip", &self.media_ip)
            .field("announce_ip", &self.announce_ip)
            .field("ports", &self.ports)
            .field("cores", &self.cores)
            .field("data_dir", &self.data_dir)
            .field("dev", &self.dev)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("engine_bin", &self.engine_bin)
            .field("engine_socket", &self.engine_socket)
            .field("backend", &self.backend)
            .field("consent_timeout_secs", &self.consent_timeout_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("resume_grace_secs", &self.resume_grace_secs)
            .finish()
    }
}

/// A configuration problem. Each message says which source held the bad value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source} (check --config / ILS_CONFIG)")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Settings`] (unknown key, wrong type, ...).
    #[error("config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// An environment variable holds a value that does not parse.
    #[error("{var}={value:?}: {expected}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A setting parsed but is out of range or inconsistent; the message names its source.
    #[error("{0}")]
    Invalid(String),
    /// A duration string is not `<number><s|m|h|d>`.
    #[error(
        "duration {input:?}: {reason}; use a number and a unit s, m, h or d (90s, 15m, 1h, 2d)"
    )]
    BadDuration {
        /// The text.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `ils-control token` arguments are invalid.
    #[error("token: {0}")]
    Token(String),
    /// The secret could not be loaded or created.
    #[error("secret: {0}")]
    Secret(#[source] std::io::Error),
}

/// Where a setting's value came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File(PathBuf),
    Env,
    Flag,
}

/// Static description of one setting.
struct Field {
    key: &'static str,
    flag: &'static str,
    var: &'static str,
}

const F_HTTP: Field = Field {
    key: "http",
    flag: "--http",
    var: "ILS_HTTP",
};
const F_MEDIA_IP: Field = Field {
    key: "media_ip",
    flag: "--media-ip",
    var: "ILS_MEDIA_IP",
};
const F_ANNOUNCE_IP: Field = Field {
    key: "announce_ip",
    flag: "--announce-ip",
    var: "ILS_ANNOUNCE_IP",
};
const F_PORTS: Field = Field {
    key: "ports",
    flag: "--ports",
    var: "ILS_PORTS",
};
const F_CORES: Field = Field {
    key: "cores",
    flag: "--cores",
    var: "ILS_CORES",
};
const F_DATA_DIR: Field = Field {
    key: "data_dir",
    flag: "--data-dir",
    var: "ILS_DATA_DIR",
};
const F_DEV: Field = Field {
    key: "dev",
    flag: "--dev",
    var: "ILS_DEV",
};
const F_SECRET: Field = Field {
    key: "secret",
    flag: "--secret",
    var: "ILS_SECRET",
};
const F_ENGINE_BIN: Field = Field {
    key: "engine_bin",
    flag: "--engine-bin",
    var: "ILS_ENGINE_BIN",
};
const F_ENGINE_SOCKET: Field = Field {
    key: "engine_socket",
    flag: "--engine-socket",
    var: "ILS_ENGINE_SOCKET",
};
const F_BACKEND: Field = Field {
    key: "backend",
    flag: "--backend",
    var: "ILS_BACKEND",
};
const F_CONSENT: Field = Field {
    key: "consent_timeout_secs",
    flag: "--consent-timeout",
    var: "ILS_CONSENT_TIMEOUT",
};
const F_BODY: Field = Field {
    key: "max_body_bytes",
    flag: "--max-body-bytes",
    var: "ILS_MAX_BODY_BYTES",
};
const F_RESUME: Field = Field {
    key: "resume_grace_secs",
    flag: "--resume-grace",
    var: "ILS_RESUME_GRACE",
};

/// Origins of the merged settings, by key.
struct Origins(HashMap<&'static str, Origin>);

impl Origins {
    /// "`--ports 70000`", "`ILS_PORTS=70000`", "`ports = 70000 in FILE`" or "`ports 40000 (default)`".
    fn describe(&self, f: &Field, value: &dyn fmt::Display) -> String {
        match self.0.get(f.key).unwrap_or(&Origin::Default) {
            Origin::Default => format!("{} {value} (default)", f.key),
            Origin::File(p) => format!("{} = {value} in {}", f.key, p.display()),
            Origin::Env => format!("{}={value}", f.var),
            Origin::Flag => format!("{} {value}", f.flag),
        }
    }
}

/// Loads settings from `args` (flags, with clap's env fallback), the process environment, the
/// config file and defaults, then validates them.
pub fn load(args: &SettingsArgs) -> Result<Settings, ConfigError> {
    load_from(args, &|k| std::env::var(k).ok(), available_cores())
}

/// [`load`] with the environment and the machine's core count as parameters (for tests, and for
/// callers that want a different view of the environment). `env` returns a variable's value.
pub fn load_from(
    args: &SettingsArgs,
    env: &dyn Fn(&str) -> Option<String>,
    available_cores: usize,
) -> Result<Settings, ConfigError> {
    let env_nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut origins = Origins(HashMap::new());

    // 1. File over defaults.
    let config_path = args
        .config
        .clone()
        .or_else(|| env_nonempty("ILS_CONFIG").map(PathBuf::from));
    let mut s = match &config_path {
        Some(path) => {
            let text = read_config_file(path)?;
            let s = parse_config_text(path, &text)?;
            // Record which keys the file set (the text parsed, so this parses too).
            if let Ok(table) = text.parse::<toml::Table>() {
                for f in ALL_FIELDS {
                    if table.contains_key(f.key) {
                        origins.0.insert(f.key, Origin::File(path.clone()));
                    }
                }
            }
            s
        }
        None => Settings::default(),
    };

    // 2. Environment over file, flags over environment.
    macro_rules! apply {
        ($field:ident, $meta:expr, $parse:expr, $expected:expr, |$v:ident| $set:expr) => {
            if let Some((val, origin)) = pick(args.$field.clone(), &$meta, env, $parse, $expected)?
            {
                let $v = val;
                s.$field = $set;
                origins.0.insert($meta.key, origin);
            }
        };
    }
    apply!(
        http,
        F_HTTP,
        |t| t.parse().ok(),
        "an address like 127.0.0.1:8080",
        |v| v
    );
    apply!(
        media_ip,
        F_MEDIA_IP,
        |t| t.parse().ok(),
        "an IP address like 127.0.0.1",
        |v| v
    );
    apply!(
        announce_ip,
        F_ANNOUNCE_IP,
        |t| t.parse().ok(),
        "an IP address like 203.0.113.7",
        |v| Some(v)
    );
    apply!(
        ports,
        F_PORTS,
        |t| t.parse().ok(),
        "a UDP port 1024..=65535",
        |v| v
    );
    apply!(
        cores,
        F_CORES,
        |t| t.parse().ok(),
        "a number of shards (0 = all cores)",
        |v| v
    );
    apply!(
        data_dir,
        F_DATA_DIR,
        |t| Some(PathBuf::from(t)),
        "a directory",
        |v| v
    );
    apply!(
        dev,
        F_DEV,
        parse_bool,
        "true/false, 1/0, yes/no or on/off",
        |v| v
    );
    apply!(
        secret,
        F_SECRET,
        |t| Some(t.to_owned()),
        "a secret string",
        |v| Some(v)
    );
    apply!(
        engine_bin,
        F_ENGINE_BIN,
        |t| Some(PathBuf::from(t)),
        "a path",
        |v| Some(v)
    );
    apply!(
        engine_socket,
        F_ENGINE_SOCKET,
        |t| Some(PathBuf::from(t)),
        "a path",
        |v| Some(v)
    );
    apply!(
        backend,
        F_BACKEND,
        |t| BACKENDS.contains(&t).then(|| t.to_owned()),
        "one of auto, io-uring, mmsg",
        |v| v
    );
    apply!(
        consent_timeout_secs,
        F_CONSENT,
        |t| t.parse().ok(),
        "seconds, 1..=3600",
        |v| v
    );
    apply!(
        max_body_bytes,
        F_BODY,
        |t| t.parse().ok(),
        "bytes, 1024..=16777216",
        |v| v
    );
    apply!(
        resume_grace_secs,
        F_RESUME,
        |t| t.parse().ok(),
        "seconds, 0..=600",
        |v| v
    );

    validate(&s, &origins, available_cores)?;
    Ok(s)
}

const ALL_FIELDS: [Field; 14] = [
    F_HTTP,
    F_MEDIA_IP,
    F_ANNOUNCE_IP,
    F_PORTS,
    F_CORES,
    F_DATA_DIR,
    F_DEV,
    F_SECRET,
    F_ENGINE_BIN,
    F_ENGINE_SOCKET,
    F_BACKEND,
    F_CONSENT,
    F_BODY,
    F_RESUME,
];

/// The flag's value if given, else the environment variable's (parsed), with its origin.
/// A flag's value that equals the variable's parsed value is attributed to the variable (clap
/// fills flags from the environment).
fn pick<T: PartialEq>(
    flag: Option<T>,
    f: &Field,
    env: &dyn Fn(&str) -> Option<String>,
    parse: impl Fn(&str) -> Option<T>,
    expected: &'static str,
) -> Result<Option<(T, Origin)>, ConfigError> {
    let raw = env(f.var).filter(|v| !v.is_empty());
    match flag {
        Some(v) => {
            let from_env = raw.as_deref().and_then(&parse).is_some_and(|e| e == v);
            Ok(Some((v, if from_env { Origin::Env } else { Origin::Flag })))
        }
        None => match raw {
            None => Ok(None),
            Some(text) => match parse(text.trim()) {
                Some(v) => Ok(Some((v, Origin::Env))),
                None => Err(ConfigError::BadEnv {
                    var: f.var,
                    value: if f.var == "ILS_SECRET" {
                        "<redacted>".into()
                    } else {
                        text
                    },
                    expected,
                }),
            },
        },
    }
}

fn parse_bool(t: &str) -> Option<bool> {
    match t.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Some(true),
        "0" | "false" | "no" | "off" | "n" => Some(false),
        _ => None,
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    f.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::ParseFile {
            path: path.to_owned(),
            message: "larger than 1 MiB; a config file only holds a few settings".to_owned(),
        });
    }
    Ok(text)
}

/// Parses config file text (TOML) into settings over the defaults; `path` is for messages.
pub fn parse_config_text(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    toml::from_str::<Settings>(text).map_err(|e| {
        let mut message = e.message().to_owned();
        if message.starts_with("unknown field") {
            message.push_str(" (remove it, or check its spelling)");
        }
        if let Some(span) = e.span() {
            let line_no = text
                .get(..span.start)
                .map_or(0, |pre| pre.bytes().filter(|&b| b == b'\n').count());
            let line: String = text
                .lines()
                .nth(line_no)
                .unwrap_or("")
                .trim()
                .chars()
                .take(80)
                .collect();
            message = format!("line {} `{line}`: {message}", line_no + 1);
        }
        ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        }
    })
}

/// Checks ranges and consistency of merged settings.
fn validate(s: &Settings, o: &Origins, available: usize) -> Result<(), ConfigError> {
    let bad = |f: &Field, v: &dyn fmt::Display, why: String| {
        Err(ConfigError::Invalid(format!("{}: {why}", o.describe(f, v))))
    };
    if s.cores > ils_shm::MAX_SHARDS {
        return bad(
            &F_CORES,
            &s.cores,
            format!("must be 0 (all cores) or 1..={}", ils_shm::MAX_SHARDS),
        );
    }
    let shards = s.shard_count(available);
    // shards is 1..=MAX_SHARDS here (cores was checked above; shard_count clamps 0 to >= 1).
    let extra = u16::try_from(shards.saturating_sub(1)).unwrap_or(u16::MAX);
    let max_port = u16::MAX.saturating_sub(extra);
    if s.ports < MIN_MEDIA_PORT || s.ports > max_port {
        return bad(
            &F_PORTS,
            &s.ports,
            format!(
                "must be {MIN_MEDIA_PORT}..={max_port} ({shards} shards use ports PORT..=PORT+{extra}; 65535 is the last UDP port)"
            ),
        );
    }
    if s.media_ip.is_multicast() {
        return bad(
            &F_MEDIA_IP,
            &s.media_ip,
            "is a multicast address; use a local unicast IP".into(),
        );
    }
    match s.announce_ip {
        Some(ip) if ip.is_unspecified() || ip.is_multicast() => {
            return bad(
                &F_ANNOUNCE_IP,
                &ip,
                "must be the unicast address clients reach this server at".into(),
            );
        }
        None if s.media_ip.is_unspecified() => {
            return bad(
                &F_MEDIA_IP,
                &s.media_ip,
                "binds every interface, so also set --announce-ip (ILS_ANNOUNCE_IP) to the address clients reach".into(),
            );
        }
        _ => {}
    }
    if s.data_dir.as_os_str().is_empty() {
        return bad(&F_DATA_DIR, &"\"\"", "must name a directory".into());
    }
    if let Some(secret) = &s.secret {
        if secret.len() < MIN_SECRET_LEN {
            return bad(
                &F_SECRET,
                &"<redacted>",
                format!(
                    "is shorter than {MIN_SECRET_LEN} bytes; use e.g. `openssl rand -hex 32`, or unset it to have one generated in the data dir"
                ),
            );
        }
    }
    if let Some(p) = &s.engine_bin {
        if p.as_os_str().is_empty() {
            return bad(
                &F_ENGINE_BIN,
                &"\"\"",
                "must be a path to ils-engine".into(),
            );
        }
    }
    if let Some(p) = &s.engine_socket {
        if p.as_os_str().is_empty() {
            return bad(&F_ENGINE_SOCKET, &"\"\"", "must be a path".into());
        }
    }
    if !BACKENDS.contains(&s.backend.as_str()) {
        return bad(
            &F_BACKEND,
            &s.backend,
            "must be one of auto, io-uring, mmsg".into(),
        );
    }
    if !(1..=MAX_CONSENT_TIMEOUT_SECS).contains(&s.consent_timeout_secs) {
        return bad(
            &F_CONSENT,
            &s.consent_timeout_secs,
            format!("must be 1..={MAX_CONSENT_TIMEOUT_SECS} seconds (RFC 7675 suggests 30)"),
        );
    }
    if s.resume_grace_secs > MAX_RESUME_GRACE_SECS {
        return bad(
            &F_RESUME,
            &s.resume_grace_secs,
            format!(
                "must be 0..={MAX_RESUME_GRACE_SECS} seconds (0: a dropped socket leaves at once)"
            ),
        );
    }
    if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&s.max_body_bytes) {
        return bad(
            &F_BODY,
            &s.max_body_bytes,
            format!(
                "must be {MIN_BODY_BYTES}..={MAX_BODY_BYTES} bytes (64 KiB fits any browser offer)"
            ),
        );
    }
    Ok(())
}

/// Parses `"90s"`, `"15m"`, `"1h"`, `"2d"`: a whole number and one unit, up to [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let err = |reason| ConfigError::BadDuration {
        input: s.to_owned(),
        reason,
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let n: u64 = num.parse().map_err(|_| err("number too large"))?;
    let mult: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(err("no unit")),
        _ => return Err(err("unknown unit")),
    };
    let secs = n.checked_mul(mult).ok_or_else(|| err("too long"))?;
    let d = Duration::from_secs(secs);
    if d > MAX_DURATION {
        return Err(err("longer than 3650d"));
    }
    Ok(d)
}

/// `ils-control token`: checks the arguments, loads (or creates) the secret the server uses and
/// returns a signed token for `room`/`role` valid from `now_unix` for `ttl`.
pub fn token_command(
    settings: &Settings,
    room: &str,
    role: &str,
    identity: Option<&str>,
    ttl: &str,
    now_unix: u64,
) -> Result<String, ConfigError> {
    token_command_ext(settings, room, role, identity, None, None, ttl, now_unix)
}

/// Parse a comma-separated grant list (`publish,subscribe,chat,admin`; empty = no grants).
pub fn parse_grants(list: &str) -> Result<Vec<auth::Grant>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            auth::Grant::parse(g)
                .ok_or_else(|| format!("unknown grant {g:?}: use publish, subscribe, chat, admin"))
        })
        .collect()
}

/// [`token_command`] with a display `name` and explicit `grants` (comma-separated) claims.
#[allow(clippy::too_many_arguments)]
pub fn token_command_ext(
    settings: &Settings,
    room: &str,
    role: &str,
    identity: Option<&str>,
    name: Option<&str>,
    grants: Option<&str>,
    ttl: &str,
    now_unix: u64,
) -> Result<String, ConfigError> {
    let grants = grants
        .map(parse_grants)
        .transpose()
        .map_err(|e| ConfigError::Token(format!("--grants: {e}")))?;
    if let Some(n) = name {
        auth::validate_name(n).map_err(|why| ConfigError::Token(format!("--name: {why}")))?;
    }
    auth::validate_room(room)
        .map_err(|why| ConfigError::Token(format!("--room {room:?}: {why}")))?;
    let role: Role = role
        .parse()
        .map_err(|e: auth::UnknownRole| ConfigError::Token(format!("--role: {e}")))?;
    if let Some(id) = identity {
        if id.chars().count() > auth::MAX_IDENTITY_CHARS || id.chars().any(char::is_control) {
            return Err(ConfigError::Token(format!(
                "--identity: at most {} characters, no control characters",
                auth::MAX_IDENTITY_CHARS
            )));
        }
    }
    let ttl = parse_duration(ttl)?;
    if ttl.is_zero() {
        return Err(ConfigError::Token(
            "--ttl must be longer than 0s".to_owned(),
        ));
    }
    let secret = Secret::load_or_create(&settings.data_dir, settings.secret.as_deref())
        .map_err(ConfigError::Secret)?;
    let claims = auth::Claims {
        room: room.to_owned(),
        role,
        identity: identity.map(str::to_owned),
        exp: now_unix.saturating_add(ttl.as_secs()),
        iat: Some(now_unix),
        grants,
        name: name.map(str::to_owned),
    };
    Ok(auth::issue_claims(&secret, &claims))
}

impl FromStr for Settings {
    type Err = ConfigError;
    /// Parses TOML config text (as in a `--config` file) over the defaults, without validation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_config_text(Path::new("<text>"), s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn cli(argv: &[&str]) -> Cli {
        let mut v = vec!["ils-control"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).unwrap()
    }

    fn temp_file(tag: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "ils-config-test-{tag}-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p
    }

    fn err_text(r: Result<Settings, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn defaults_with_nothing_set() {
        let s = load_from(&SettingsArgs::default(), &no_env, 4).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.media_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.advertised_ip(), s.media_ip);
        assert_eq!(s.ports, 40000);
        assert_eq!(s.cores, 0);
        assert_eq!(s.data_dir, PathBuf::from("./ils-data"));
        assert!(!s.dev);
        assert_eq!(s.backend, "auto");
        assert_eq!(s.consent_timeout_secs, 30);
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(
            s.engine_socket_path(),
            PathBuf::from("./ils-data/engine.sock")
        );
        assert_eq!(s.shard_count(4), 4);
        assert_eq!(s.shard_count(1000), ils_shm::MAX_SHARDS);
        assert_eq!(s.shard_port(3), Some(40003));
        // Parsing an empty command line gives the same.
        let c = cli(&[]);
        assert!(c.command.is_none());
        assert_eq!(load_from(&c.args, &no_env, 4).unwrap(), Settings::default());
    }

    #[test]
    fn file_overrides_default() {
        let p = temp_file(
            "file",
            "http = \"0.0.0.0:9000\"\nmedia_ip = \"10.0.0.5\"\nports = 41000\ncores = 2\ndev = true\nbackend = \"mmsg\"\nengine_socket = \"/run/ils.sock\"\n",
        );
        let args = SettingsArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let s = load_from(&args, &no_env, 4).unwrap();
        assert_eq!(s.http, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.media_ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(s.ports, 41000);
        assert_eq!(s.cores, 2);
        assert!(s.dev);
        assert_eq!(s.backend, "mmsg");
        assert_eq!(s.engine_socket_path(), PathBuf::from("/run/ils.sock"));
        // Untouched keys keep their defaults.
        assert_eq!(s.consent_timeout_secs, 30);
        assert_eq!(s.data_dir, PathBuf::from("./ils-data"));
        // ILS_CONFIG names the file too.
        let p2 = p.to_string_lossy().into_owned();
        let s2 = load_from(&SettingsArgs::default(), &env_of(&[("ILS_CONFIG", &p2)]), 4).unwrap();
        assert_eq!(s2, s);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn env_overrides_file() {
        let p = temp_file("env", "ports = 41000\ncores = 2\n");
        let args = SettingsArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let env = env_of(&[
            ("ILS_PORTS", "42000"),
            ("ILS_DEV", "yes"),
            ("ILS_ANNOUNCE_IP", "203.0.113.7"),
            ("ILS_CONSENT_TIMEOUT", "10"),
            ("ILS_SECRET", "0123456789abcdef0123"),
        ]);
        let s = load_from(&args, &env, 4).unwrap();
        assert_eq!(s.ports, 42000);
        assert_eq!(s.cores, 2, "file value kept when env does not set it");
        assert!(s.dev);
        assert_eq!(s.advertised_ip(), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(s.consent_timeout_secs, 10);
        assert_eq!(s.secret.as_deref(), Some("0123456789abcdef0123"));
        // Empty variables count as unset.
        let s = load_from(&args, &env_of(&[("ILS_PORTS", "")]), 4).unwrap();
        assert_eq!(s.ports, 41000);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn flag_overrides_env() {
        let p = temp_file("flag", "ports = 41000\n");
        let ps = p.to_string_lossy().into_owned();
        let c = cli(&[
            "--ports",
            "43000",
            "--config",
            &ps,
            "--dev=false",
            "--backend",
            "io-uring",
        ]);
        let env = env_of(&[
            ("ILS_PORTS", "42000"),
            ("ILS_DEV", "1"),
            ("ILS_BACKEND", "mmsg"),
        ]);
        let s = load_from(&c.args, &env, 4).unwrap();
        assert_eq!(s.ports, 43000);
        assert!(!s.dev);
        assert_eq!(s.backend, "io-uring");
        // A bad env value that a flag overrides is ignored.
        let env = env_of(&[("ILS_PORTS", "not-a-port")]);
        assert_eq!(load_from(&c.args, &env, 4).unwrap().ports, 43000);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn every_flag_parses() {
        let c = cli(&[
            "--http",
            "[::1]:8443",
            "--media-ip",
            "::",
            "--announce-ip",
            "2001:db8::1",
            "--ports",
            "50000",
            "--cores",
            "3",
            "--data-dir",
            "/var/lib/ils",
            "--dev",
            "--secret",
            "a-long-enough-secret",
            "--engine-bin",
            "/opt/ils-engine",
            "--engine-socket",
            "/tmp/e.sock",
            "--backend",
            "mmsg",
            "--consent-timeout",
            "45",
            "--max-body-bytes",
            "100000",
            "--resume-grace",
            "5",
        ]);
        let s = load_from(&c.args, &no_env, 4).unwrap();
        assert_eq!(
            s,
            Settings {
                http: "[::1]:8443".parse().unwrap(),
                media_ip: "::".parse().unwrap(),
                announce_ip: Some("2001:db8::1".parse().unwrap()),
                ports: 50000,
                cores: 3,
                data_dir: "/var/lib/ils".into(),
                dev: true,
                secret: Some("a-long-enough-secret".into()),
                engine_bin: Some("/opt/ils-engine".into()),
                engine_socket: Some("/tmp/e.sock".into()),
                backend: "mmsg".into(),
                consent_timeout_secs: 45,
                max_body_bytes: 100000,
                resume_grace_secs: 5,
            }
        );
        // The alias for the file key name also works.
        assert_eq!(
            cli(&["--consent-timeout-secs", "7"])
                .args
                .consent_timeout_secs,
            Some(7)
        );
    }

    #[test]
    fn token_subcommand_parses_with_global_flags() {
        let c = cli(&[
            "token",
            "--room",
            "r1",
            "--role",
            "host",
            "--data-dir",
            "/d",
        ]);
        match c.command {
            Some(CliCommand::Token {
                room,
                role,
                identity,
                name,
                grants,
                ttl,
            }) => {
                assert_eq!(
                    (room.as_str(), role.as_str(), identity, ttl.as_str()),
                    ("r1", "host", None, "1h")
                );
                assert_eq!((name, grants), (None, None));
            }
            None => panic!("no subcommand"),
        }
        assert_eq!(c.args.data_dir, Some(PathBuf::from("/d")));
        let c = cli(&[
            "--dev",
            "token",
            "--room",
            "r",
            "--role",
            "viewer",
            "--ttl",
            "5m",
            "--identity",
            "bob",
        ]);
        assert_eq!(c.args.dev, Some(true));
        assert!(matches!(c.command, Some(CliCommand::Token { .. })));
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let p = temp_file("unknown", "ports = 41000\nprots = 5\n");
        let args = SettingsArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let e = err_text(load_from(&args, &no_env, 4));
        assert!(e.contains("prots"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn bad_file_values_are_errors() {
        for (text, needle) in [
            ("ports = 70000", "ports"),
            ("ports = \"40000\"", "ports"),
            ("http = \"localhost\"", "http"),
            ("media_ip = \"not-an-ip\"", "media_ip"),
            ("dev = \"maybe\"", "dev"),
            ("ports = ", "line 1"),
        ] {
            let e = match parse_config_text(Path::new("x.toml"), text) {
                Err(e) => e.to_string(),
                Ok(s) => panic!("{text} parsed: {s:?}"),
            };
            assert!(e.contains("x.toml") && e.contains(needle), "{text}: {e}");
        }
        let missing = SettingsArgs {
            config: Some("/nonexistent/ils.toml".into()),
            ..Default::default()
        };
        let e = err_text(load_from(&missing, &no_env, 4));
        assert!(
            e.contains("/nonexistent/ils.toml") && e.contains("--config"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_give_guidance() {
        type Case<'a> = (SettingsArgs, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                SettingsArgs {
                    ports: Some(80),
                    ..Default::default()
                },
                vec![],
                "--ports 80: must be 1024..=65532",
            ),
            (
                SettingsArgs {
                    ports: Some(65534),
                    cores: Some(4),
                    ..Default::default()
                },
                vec![],
                "--ports 65534: must be 1024..=65532 (4 shards",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_PORTS", "65535")],
                "ILS_PORTS=65535: must be 1024..=65532",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_PORTS", "70000")],
                "ILS_PORTS=\"70000\": a UDP port",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_CORES", "many")],
                "ILS_CORES=\"many\"",
            ),
            (
                SettingsArgs {
                    cores: Some(65),
                    ..Default::default()
                },
                vec![],
                "--cores 65: must be 0 (all cores) or 1..=64",
            ),
            (
                SettingsArgs {
                    media_ip: Some("0.0.0.0".parse().unwrap()),
                    ..Default::default()
                },
                vec![],
                "--announce-ip",
            ),
            (
                SettingsArgs {
                    announce_ip: Some("0.0.0.0".parse().unwrap()),
                    ..Default::default()
                },
                vec![],
                "--announce-ip 0.0.0.0: must be the unicast address",
            ),
            (
                SettingsArgs {
                    secret: Some("short".into()),
                    ..Default::default()
                },
                vec![],
                "openssl rand",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_BACKEND", "epoll")],
                "ILS_BACKEND=\"epoll\": one of auto",
            ),
            (
                SettingsArgs {
                    consent_timeout_secs: Some(0),
                    ..Default::default()
                },
                vec![],
                "--consent-timeout 0: must be 1..=3600",
            ),
            (
                SettingsArgs {
                    max_body_bytes: Some(10),
                    ..Default::default()
                },
                vec![],
                "--max-body-bytes 10: must be 1024",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_DEV", "maybe")],
                "ILS_DEV=\"maybe\": true/false",
            ),
            (
                SettingsArgs::default(),
                vec![("ILS_HTTP", "8080")],
                "ILS_HTTP=\"8080\": an address",
            ),
        ];
        for (args, env, needle) in cases {
            let e = err_text(load_from(&args, &env_of(&env), 4));
            assert!(e.contains(needle), "expected {needle:?} in {e:?}");
        }
        // Secrets never appear in messages.
        let e = err_text(load_from(
            &SettingsArgs::default(),
            &env_of(&[("ILS_SECRET", "tiny")]),
            4,
        ));
        assert!(!e.contains("tiny") && e.contains("ILS_SECRET"), "{e}");
        // A bad value from the file is attributed to the file.
        let p = temp_file("badrange", "consent_timeout_secs = 99999\n");
        let args = SettingsArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let e = err_text(load_from(&args, &no_env, 4));
        assert!(
            e.contains("consent_timeout_secs = 99999 in") && e.contains("1..=3600"),
            "{e}"
        );
        let _ = std::fs::remove_file(p);
        // Ports at the top edge are fine with exactly enough room.
        let ok = SettingsArgs {
            ports: Some(65532),
            cores: Some(4),
            ..Default::default()
        };
        assert!(load_from(&ok, &no_env, 1).is_ok());
        let ok = SettingsArgs {
            ports: Some(65535),
            cores: Some(1),
            ..Default::default()
        };
        assert!(load_from(&ok, &no_env, 64).is_ok());
    }

    #[test]
    fn clap_rejects_bad_flags() {
        for argv in [
            vec!["ils-control", "--ports", "70000"],
            vec!["ils-control", "--backend", "epoll"],
            vec!["ils-control", "--http", "nope"],
            vec!["ils-control", "--no-such-flag"],
            vec!["ils-control", "token", "--role", "host"],
        ] {
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn help_documents_every_setting_and_hides_secret() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for f in ALL_FIELDS {
            assert!(help.contains(f.flag), "{} missing from --help", f.flag);
            assert!(help.contains(f.var), "{} missing from --help", f.var);
        }
        assert!(help.contains("--config") && help.contains("ILS_CONFIG"));
        assert!(help.contains("token"));
        Cli::command().debug_assert();
        let cmd = Cli::command();
        let secret = cmd
            .get_arguments()
            .find(|a| a.get_id() == "secret")
            .unwrap();
        assert!(
            secret.is_hide_env_values_set(),
            "ILS_SECRET's value must not be printed by --help"
        );
        let args = SettingsArgs {
            secret: Some("hunter2-hunter2-hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{args:?}").contains("hunter2"));
        let s = Settings {
            secret: Some("hunter2-hunter2-hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration(" 0s ").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
        for bad in [
            "",
            "s",
            "90",
            "1x",
            "1.5h",
            "-1h",
            "1h30m",
            "3651d",
            "99999999999999999999s",
            "18446744073709551615d",
            "h1",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("90s, 15m, 1h, 2d"), "{bad}: {e}");
        }
    }

    #[test]
    fn token_command_ext_mints_grants_and_name() {
        let dir = std::env::temp_dir().join(format!("ils-cfg-grants-{}", std::process::id()));
        let s = Settings {
            data_dir: dir.clone(),
            secret: Some("0123456789abcdef0123".into()),
            ..Settings::default()
        };
        let t = token_command_ext(
            &s,
            "r",
            "viewer",
            None,
            Some("Ann"),
            Some("chat, admin"),
            "1h",
            1_000,
        )
        .unwrap();
        let secret = Secret::from_str("0123456789abcdef0123");
        let c = auth::verify(&secret, &t, 1_000).unwrap();
        assert_eq!(c.name.as_deref(), Some("Ann"));
        assert_eq!(c.grants, Some(vec![auth::Grant::Chat, auth::Grant::Admin]));
        let e = token_command_ext(&s, "r", "viewer", None, None, Some("root"), "1h", 1_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--grants") && e.contains("root"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn token_command_issues_verifiable_tokens() {
        let dir = std::env::temp_dir().join(format!("ils-config-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Settings {
            data_dir: dir.clone(),
            ..Default::default()
        };
        let t = token_command(&s, "lobby", "producer", Some("cam1"), "15m", 1_000).unwrap();
        // The server side loads the same (now stored) secret.
        let secret = Secret::load_or_create(&dir, None).unwrap();
        let c = auth::verify(&secret, &t, 1_000).unwrap();
        assert_eq!(
            (c.room.as_str(), c.role, c.identity.as_deref(), c.exp),
            ("lobby", Role::Producer, Some("cam1"), 1_900)
        );
        // A configured secret is used instead.
        let s2 = Settings {
            secret: Some("configured-secret-xyz".into()),
            ..s.clone()
        };
        let t2 = token_command(&s2, "lobby", "viewer", None, "1h", 1_000).unwrap();
        assert!(auth::verify(&Secret::from_str("configured-secret-xyz"), &t2, 1_000).is_ok());
        assert!(auth::verify(&secret, &t2, 1_000).is_err());
        for (room, role, ttl, needle) in [
            ("", "host", "1h", "--room"),
            ("r", "admin", "1h", "--role"),
            ("r", "host", "0s", "--ttl"),
            ("r", "host", "forever", "duration"),
        ] {
            let e = token_command(&s, room, role, None, ttl, 1_000)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn engine_bin_resolution() {
        let dir = std::env::temp_dir().join(format!("ils-config-bin-{}", std::process::id()));
        let bin_dir = dir.join("bin");
        let path_dir = dir.join("path");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&path_dir).unwrap();
        std::fs::write(path_dir.join(ENGINE_BIN_NAME), b"").unwrap();
        let s = Settings::default();
        let exe = bin_dir.join("ils-control");
        let path_var = std::env::join_paths([&path_dir]).unwrap();
        assert_eq!(
            s.resolve_engine_bin_from(Some(&exe), Some(&path_var))
                .unwrap(),
            path_dir.join(ENGINE_BIN_NAME)
        );
        std::fs::write(bin_dir.join(ENGINE_BIN_NAME), b"").unwrap();
        assert_eq!(
            s.resolve_engine_bin_from(Some(&exe), Some(&path_var))
                .unwrap(),
            bin_dir.join(ENGINE_BIN_NAME)
        );
        let e = s
            .resolve_engine_bin_from(None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--engine-bin"), "{e}");
        let explicit = Settings {
            engine_bin: Some(dir.join("missing")),
            ..Default::default()
        };
        assert!(explicit
            .resolve_engine_bin_from(Some(&exe), Some(&path_var))
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let s = Settings {
            announce_ip: Some("198.51.100.1".parse().unwrap()),
            engine_bin: Some("/x/ils-engine".into()),
            ..Default::default()
        };
        let text = toml::to_string(&s).unwrap();
        assert_eq!(text.parse::<Settings>().unwrap(), s);
        assert_eq!("".parse::<Settings>().unwrap(), Settings::default());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_config_text_never_panics(text in ".{0,400}") {
            let _ = parse_config_text(Path::new("p.toml"), &text);
        }

        #[test]
        fn arbitrary_env_values_never_panic(
            port in ".{0,12}", cores in ".{0,8}", http in ".{0,24}", dev in ".{0,6}", body in ".{0,10}"
        ) {
            let env = env_of(&[
                ("ILS_PORTS", &port), ("ILS_CORES", &cores), ("ILS_HTTP", &http),
                ("ILS_DEV", &dev), ("ILS_MAX_BODY_BYTES", &body),
            ]);
            let _ = load_from(&SettingsArgs::default(), &env, 8);
        }

        #[test]
        fn arbitrary_numbers_validate_without_panic(
            ports in proptest::prelude::any::<u16>(),
            cores in proptest::prelude::any::<usize>(),
            avail in proptest::prelude::any::<usize>(),
            consent in proptest::prelude::any::<u64>(),
            body in proptest::prelude::any::<usize>(),
        ) {
            let args = SettingsArgs {
                ports: Some(ports), cores: Some(cores), consent_timeout_secs: Some(consent),
                max_body_bytes: Some(body), ..Default::default()
            };
            if let Ok(s) = load_from(&args, &no_env, avail) {
                let shards = s.shard_count(avail);
                proptest::prop_assert!(s.shard_port(shards - 1).is_some());
            }
        }

        #[test]
        fn arbitrary_durations_never_panic(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
