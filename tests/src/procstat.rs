//! Memory of the calling process, from `/proc/self/status` (Linux), for the soak and
//! throughput programs.

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
