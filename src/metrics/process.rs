//! Spillway's own process figures (resident memory, CPU seconds, start time), read from
//! `/proc/self` at the time of a scrape and appended to the Prometheus text.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{PROCESS_CPU, PROCESS_RESIDENT, PROCESS_START};

/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every Linux architecture).
const USER_HZ: f64 = 100.0;

static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Records the process's start time (once).
pub(crate) fn start() {
    START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
}

/// Appends Spillway's process metrics (resident memory, CPU seconds, start time) to a
/// Prometheus text body, read from `/proc/self` at the time of the scrape (Linux; elsewhere
/// only the start time).
pub(crate) fn render_process(out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            ));
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    family(
        PROCESS_RESIDENT,
        "gauge",
        "Resident memory of the Spillway process, in bytes.",
        status
            .as_deref()
            .and_then(parse_status_rss)
            .map(|b| b as f64),
    );
    family(
        PROCESS_CPU,
        "counter",
        "CPU time (user and system) of the Spillway process, in seconds.",
        stat.as_deref().and_then(parse_stat_cpu),
    );
    family(
        PROCESS_START,
        "gauge",
        "Unix time the Spillway process started, in seconds.",
        START.get().copied(),
    );
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `utime + stime` of `/proc/self/stat`, in seconds. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_command_name() {
        let stat = "9934 (my (odd) prog) R 9892 9892 8183 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 310570";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tspillway\nVmPeak:\t  9000 kB\nVmRSS:\t   23456 kB\n";
        assert_eq!(parse_status_rss(status), Some(23_456 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn process_metrics_render_from_this_process() {
        start();
        let mut out = String::new();
        render_process(&mut out);
        assert!(
            out.contains("# TYPE spillway_process_cpu_seconds_total counter\n"),
            "{out}"
        );
        let rss = out
            .lines()
            .find_map(|l| l.strip_prefix("spillway_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("resident memory line");
        assert!(rss > 1e6, "{out}");
        assert!(
            out.contains("spillway_process_start_time_seconds 1"),
            "{out}"
        );
    }
}
