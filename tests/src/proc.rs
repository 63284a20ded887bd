//! Process and port helpers for tests that start the real `ils-engine` binary.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Lowest port [`try_free_udp_port_range`] starts a search at. Default 20000 (above the
/// usual well-known/registered service ports).
pub const PORT_SEARCH_LOW: u16 = 20000;
/// Highest port a range found by [`try_free_udp_port_range`] may end at. Default 60000
/// (below Linux's default ephemeral range 32768–60999 top, leaving room for the kernel).
pub const PORT_SEARCH_HIGH: u16 = 60000;
/// Start offsets tried by [`try_free_udp_port_range`] before giving up. Default 200; bounds
/// the time spent (each try binds at most `n` sockets).
pub const PORT_SEARCH_ATTEMPTS: usize = 200;
/// How long [`ChildGuard`]'s drop waits for the child after killing it. Default 5 s.
pub const CHILD_REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Path of a binary built in this workspace: `$CARGO_TARGET_DIR` or `<workspace>/target`,
/// profile `debug` or `release`, whichever exists and is newer. If neither exists, the
/// `debug` path is returned (spawning it then fails with a clear "not found").
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let exe = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates = [
        target.join("debug").join(&exe),
        target.join("release").join(&exe),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?.modified().ok()?;
            Some((m, p.clone()))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p);
    let [debug, _] = candidates;
    newest.unwrap_or(debug)
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawn `cmd` under a guard.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        Ok(Self {
            child: Some(cmd.spawn()?),
        })
    }

    /// Guard an already spawned child.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The child (for its stdin/stdout/stderr pipes).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// `Some(status)` if the child has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Send a signal (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        let Some(pid) = self.id() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::other("pid does not fit pid_t"))?;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let r = unsafe { libc::kill(pid, sig) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Wait up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the child now and reap it; returns its exit status.
    pub fn kill_and_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        if let Some(s) = c.try_wait()? {
            return Ok(Some(s));
        }
        let _ = c.kill();
        let deadline = Instant::now() + CHILD_REAP_TIMEOUT;
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill_and_wait();
    }
}

fn range_is_free(base: u16, n: u16) -> bool {
    let mut held = Vec::with_capacity(n as usize);
    for i in 0..n {
        let Some(port) = base.checked_add(i) else {
            return false;
        };
        match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
            Ok(s) => held.push(s),
            Err(_) => return false,
        }
    }
    true
}

/// Find `n` consecutive loopback UDP ports that are free right now (bound then released;
/// another process may still take them before you do).
pub fn try_free_udp_port_range(n: u16) -> std::io::Result<u16> {
    let span = PORT_SEARCH_HIGH - PORT_SEARCH_LOW;
    if n == 0 || n > span {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot search for {n} consecutive ports"),
        ));
    }
    let slots = span - n + 1;
    for _ in 0..PORT_SEARCH_ATTEMPTS {
        let base = PORT_SEARCH_LOW + rand::random::<u16>() % slots;
        if range_is_free(base, n) {
            return Ok(base);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no {n} consecutive free UDP ports found"),
    ))
}

/// Like [`try_free_udp_port_range`], for test code.
///
/// # Panics
/// If no free range is found after [`PORT_SEARCH_ATTEMPTS`] tries (environment problem,
/// not input), or `n` is 0 or larger than the search span.
pub fn free_udp_port_range(n: u16) -> u16 {
    match try_free_udp_port_range(n) {
        Ok(p) => p,
        Err(e) => panic!("free_udp_port_range({n}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_is_bindable() {
        let base = free_udp_port_range(4);
        for i in 0..4 {
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, base + i)).unwrap();
        }
        assert!(try_free_udp_port_range(0).is_err());
    }

    #[test]
    fn workspace_bin_points_into_target() {
        let p = workspace_bin("ils-engine");
        assert!(p.ends_with("ils-engine"));
        assert!(p.to_string_lossy().contains("target"));
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let g = ChildGuard::spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = g.id().unwrap() as libc::pid_t;
        drop(g);
        // reaped: kill(pid, 0) now fails with ESRCH
        // SAFETY: signal 0 only checks existence.
        let r = unsafe { libc::kill(pid, 0) };
        assert_eq!(r, -1);
    }
}
