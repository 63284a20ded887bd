//! Running the real `ils-load` binary against a fresh `ils-control` (the load smoke tests).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{start_control, RunningControl};
use crate::workspace_bin;

/// A finished `ils-load` run; the server keeps running until [`LoadRun::finish`] (or drop).
pub struct LoadRun {
    /// The server the load ran against.
    pub control: RunningControl,
    /// Scratch directory of the run: `data/` (the server's) and `out/`.
    pub tmp: PathBuf,
    /// The load tool's `--out` directory (`result.json`, `summary.md`, ...).
    pub out: PathBuf,
    /// What the load tool printed on stdout (its summary).
    pub stdout: String,
    /// The text of `out/result.json`.
    pub result: String,
    /// How long the load tool ran.
    pub took: Duration,
}

impl LoadRun {
    /// Stop the server and remove the scratch directory.
    pub fn finish(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// Start `ils-control` (data in a fresh `$TMP/<name>-<pid>/data`, `ILS_SECRET=secret`), run
/// `ils-load http://<control> <args> --control-pid <pid> --out <tmp>/out` with the same secret
/// (its stderr goes to the test's), print its summary and read `result.json`. Panics when the
/// load tool fails or writes no result.
pub fn run_load(name: &str, secret: &str, args: &[&str]) -> LoadRun {
    let tmp = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (control, addr) = start_control(&tmp.join("data"), secret);
    let out = tmp.join("out");
    let started = Instant::now();
    let load = Command::new(workspace_bin("ils-load"))
        .arg(format!("http://{addr}"))
        .args(args)
        .arg("--control-pid")
        .arg(control.0.id().expect("control pid").to_string())
        .arg("--out")
        .arg(&out)
        .env("ILS_SECRET", secret)
        .stderr(Stdio::inherit())
        .output()
        .expect("run ils-load (cargo build -p ils-load)");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&load.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(load.status.success(), "ils-load failed: {}", load.status);
    let result = std::fs::read_to_string(out.join("result.json")).expect("result.json");
    LoadRun {
        control,
        tmp,
        out,
        stdout,
        result,
        took,
    }
}
