//! CPU time and memory of processes from /proc (the server's engine and control, and the
//! load tool itself).

use std::time::Duration;

/// Largest /proc file read, bytes. Default 64 KiB (a stat/status file is < 2 KiB).
pub const MAX_PROC_FILE: usize = 64 * 1024;

/// Why a /proc value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (process gone, no permission).
    #[error("cannot read {0}")]
    Unreadable(String),
    /// The content did not have the expected shape.
    #[error("malformed /proc content")]
    Malformed,
}

fn read(path: &str) -> Result<String, ProcError> {
    let s = std::fs::read(path).map_err(|_| ProcError::Unreadable(path.to_owned()))?;
    if s.len() > MAX_PROC_FILE {
        return Err(ProcError::Malformed);
    }
    Ok(String::from_utf8_lossy(&s).into_owned())
}

/// Fields of /proc/<pid>/stat after the command name: (ppid, utime+stime in ticks).
pub fn parse_stat(stat: &str) -> Result<(u32, u64), ProcError> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .ok_or(ProcError::Malformed)?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest[0] = state (field 3), ppid = field 4, utime = 14, stime = 15.
    let get = |field: usize| -> Result<u64, ProcError> {
        f.get(field - 3)
            .and_then(|v| v.parse().ok())
            .ok_or(ProcError::Malformed)
    };
    let ppid = u32::try_from(get(4)?).map_err(|_| ProcError::Malformed)?;
    Ok((ppid, get(14)?.saturating_add(get(15)?)))
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Total CPU time (user + system) of `pid` ("self" for this process).
pub fn cpu_time(pid: &str) -> Result<Duration, ProcError> {
    let (_, ticks) = parse_stat(&read(&format!("/proc/{pid}/stat"))?)?;
    let tps = ticks_per_sec();
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / tps,
    ))
}

/// Resident set size of `pid` in bytes ("self" for this process).
pub fn rss_bytes(pid: &str) -> Result<u64, ProcError> {
    let s = read(&format!("/proc/{pid}/status"))?;
    parse_rss(&s)
}

/// VmRSS from a /proc/<pid>/status text, in bytes.
pub fn parse_rss(status: &str) -> Result<u64, ProcError> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(ProcError::Malformed)
}

/// The child of `parent` whose command line contains `needle` (e.g. control's engine: the
/// same binary run as `ils-control engine ...`).
pub fn find_child(parent: u32, needle: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = read(&format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parse_stat(&stat).map(|(pp, _)| pp) != Ok(parent) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (ils control) S 99 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200 0";

    #[test]
    fn parses_stat_with_spaces_in_name() {
        assert_eq!(parse_stat(STAT), Ok((99, 300)));
        for n in 0..STAT.len() {
            let _ = parse_stat(&STAT[..n]);
        }
        assert!(parse_stat("1 (x) S").is_err());
        assert!(parse_stat("no paren").is_err());
    }

    #[test]
    fn own_process_is_readable() {
        assert!(cpu_time("self").is_ok());
        assert!(rss_bytes("self").unwrap() > 0);
        assert_eq!(parse_rss("VmRSS:\t  100 kB\n"), Ok(102_400));
        assert!(parse_rss("nothing").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = parse_stat(&s);
            let _ = parse_rss(&s);
        }
    }
}
