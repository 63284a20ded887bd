//! End-to-end checks of settings and tokens through the real `ils-control` binary: `--help`,
//! `ils-control token`, and precedence of flags / `ILS_*` variables / config file as clap and
//! `config::load` see them in a child process (so no test mutates this process's environment).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use ils_control::auth::{self, Action, Role, Secret};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ils-control"));
    // Start from a clean ILS_* environment.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ILS_") {
            c.env_remove(k);
        }
    }
    c
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ils-config-auth-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_documents_flags_and_env_vars() {
    let o = bin().arg("--help").output().unwrap();
    assert!(o.status.success());
    let h = stdout(&o);
    for needle in [
        "--http",
        "ILS_HTTP",
        "--media-ip",
        "ILS_MEDIA_IP",
        "--announce-ip",
        "ILS_ANNOUNCE_IP",
        "--ports",
        "ILS_PORTS",
        "--cores",
        "ILS_CORES",
        "--data-dir",
        "ILS_DATA_DIR",
        "--config",
        "ILS_CONFIG",
        "--dev",
        "ILS_DEV",
        "--secret",
        "ILS_SECRET",
        "--engine-bin",
        "--engine-socket",
        "--backend",
        "--consent-timeout",
        "--max-body-bytes",
        "token",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}:\n{h}");
    }
    // The secret's value is never echoed by --help.
    let o = bin()
        .arg("--help")
        .env("ILS_SECRET", "do-not-print-this-secret")
        .output()
        .unwrap();
    assert!(!stdout(&o).contains("do-not-print-this-secret"));
}

#[test]
fn token_command_uses_the_servers_stored_secret() {
    let dir = temp_dir("token");
    let o = bin()
        .args([
            "token",
            "--room",
            "lobby",
            "--role",
            "producer",
            "--identity",
            "cam",
            "--ttl",
            "15m",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o);
    // The server loads the same secret from the data dir.
    let secret = Secret::load_or_create(&dir, None).unwrap();
    let header = format!("Bearer {token}");
    let c = auth::authorize(Some(&header), &secret, "lobby", Action::Publish, now()).unwrap();
    assert_eq!(c.role, Role::Producer);
    assert_eq!(c.identity.as_deref(), Some("cam"));
    assert!(c.exp >= now() + 14 * 60 && c.exp <= now() + 16 * 60);
    // Wrong room is 403, a second token from the same dir verifies too.
    assert_eq!(
        auth::authorize(Some(&header), &secret, "other", Action::Publish, now())
            .unwrap_err()
            .status(),
        403
    );
    let o2 = bin()
        .args(["token", "--room", "lobby", "--role", "viewer"])
        .env("ILS_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert!(auth::verify(&secret, &stdout(&o2), now()).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ils_secret_env_signs_tokens() {
    let dir = temp_dir("envsecret");
    let o = bin()
        .args(["token", "--room", "r", "--role", "host"])
        .arg("--data-dir")
        .arg(&dir)
        .env("ILS_SECRET", "an-environment-secret-123")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = Secret::from_str("an-environment-secret-123");
    assert!(auth::verify(&s, &stdout(&o), now()).is_ok());
    assert!(
        !dir.join(auth::SECRET_FILE).exists(),
        "a configured secret is not written to disk"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn precedence_flag_env_file_in_a_real_process() {
    let dir = temp_dir("prec");
    let cfg = dir.join("ils.toml");
    std::fs::write(&cfg, "ports = 80\n").unwrap();
    // The file's invalid value is reported, attributed to the file.
    let run = |c: &mut Command| {
        c.args(["token", "--room", "r", "--role", "host"])
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let o = run(bin().env("ILS_CONFIG", &cfg));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("ports = 80 in") && e.contains("1024"), "{e}");
    // The environment overrides the file...
    let o = run(bin().env("ILS_CONFIG", &cfg).env("ILS_PORTS", "70"));
    assert!(stderr(&o).contains("ILS_PORTS=70"), "{}", stderr(&o));
    let o = run(bin().env("ILS_CONFIG", &cfg).env("ILS_PORTS", "41000"));
    assert!(o.status.success(), "{}", stderr(&o));
    // ...and a flag overrides the environment.
    let o = run(bin()
        .env("ILS_CONFIG", &cfg)
        .env("ILS_PORTS", "41000")
        .args(["--ports", "90"]));
    assert!(stderr(&o).contains("--ports 90"), "{}", stderr(&o));
    // Unknown keys in the file are named.
    std::fs::write(&cfg, "portz = 41000\n").unwrap();
    let o = run(bin().arg("--config").arg(&cfg));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("portz"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_token_arguments_fail_with_a_message() {
    let dir = temp_dir("badargs");
    for (args, needle) in [
        (vec!["token", "--room", "r", "--role", "admin"], "role"),
        (
            vec!["token", "--room", "r", "--role", "host", "--ttl", "forever"],
            "90s",
        ),
    ] {
        let o = bin()
            .args(&args)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
