//! Driving a real `ils-control` process over HTTP in tests: start it on free ports, send raw
//! HTTP/1.1 requests, read metrics, stop it gracefully.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proc::{free_udp_port_range, workspace_bin, ChildGuard};

/// How long [`start_control`] waits for the HTTP listener.
pub const CONTROL_START_TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP response.
pub struct Reply {
    /// Status code (0 if the status line did not parse).
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to ils-control");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The value of an unlabelled Prometheus metric at `/metrics`; panics if it is missing.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let m = request(addr, "GET", "/metrics", &[], "");
    m.body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// A running `ils-control`, stopped with SIGTERM on drop (a graceful stop also stops its
/// engine; SIGKILL would leave the engine running on purpose), then the guard's SIGKILL.
pub struct RunningControl(pub ChildGuard);

impl Drop for RunningControl {
    fn drop(&mut self) {
        let _ = self.0.signal(libc::SIGTERM);
        let _ = self.0.wait_timeout(Duration::from_secs(10));
    }
}

/// Start `ils-control` with `--data-dir data`, a free HTTP port, one free UDP port, one shard
/// and `ILS_SECRET=secret`; returns once it listens.
pub fn start_control(data: &Path, secret: &str) -> (RunningControl, SocketAddr) {
    start_control_with_env(data, secret, &[])
}

/// [`start_control`] with extra environment variables (settings such as `ILS_RESUME_GRACE`).
pub fn start_control_with_env(
    data: &Path,
    secret: &str,
    env: &[(&str, &str)],
) -> (RunningControl, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port");
    let udp = free_udp_port_range(1);
    let mut cmd = Command::new(workspace_bin("ils-control"));
    cmd.arg("--data-dir")
        .arg(data)
        .args([
            "--http",
            &http.to_string(),
            "--ports",
            &udp.to_string(),
            "--cores",
            "1",
        ])
        .env("ILS_SECRET", secret)
        .env("ILS_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child =
        ChildGuard::spawn(&mut cmd).expect("spawn ils-control (cargo build -p ils-control)");
    let deadline = Instant::now() + CONTROL_START_TIMEOUT;
    while TcpStream::connect(http).is_err() {
        assert!(
            Instant::now() < deadline,
            "ils-control did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (RunningControl(child), http)
}
