//! Memory of the calling process (`/proc/self/status`) and CPU of any process
//! (`/proc/PID/stat`), Linux, for the soak and throughput programs.

/// Resident set size and its peak (`VmRSS`, `VmHWM`), in KiB; zeros off Linux.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// User + system CPU of process `pid`, all its threads, from `/proc/PID/stat` (zero
/// when it cannot be read).
pub fn process_cpu(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    std::time::Duration::from_secs_f64((ticks(11) + ticks(12)) / CLOCK_TICKS)
}
