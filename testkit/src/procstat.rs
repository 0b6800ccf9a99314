//! What the benchmarks measure besides time: a process's CPU time and peak memory (from
//! `/proc`), samples of spillway's `/metrics`, and a one-line description of the machine.

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The CPU spent by a set of processes, each named, and by the whole machine, since `start`.
pub struct CpuMeter {
    pids: Vec<(&'static str, u32)>,
    start: Vec<f64>,
    machine_start: f64,
}

impl CpuMeter {
    /// Starts counting for Spillway (`spillway`, its pid), the servers listening on
    /// `servers` (name, port of 127.0.0.1), and this process (the producer and checks).
    pub fn start_for(spillway: u32, servers: &[(&'static str, u16)]) -> CpuMeter {
        let mut pids = vec![("Spillway", spillway)];
        for (name, port) in servers {
            let pid = pid_listening(*port).unwrap_or_else(|| panic!("no {name} on port {port}"));
            pids.push((*name, pid));
        }
        pids.push(("producer and checks (this bench)", std::process::id()));
        CpuMeter::start(pids)
    }

    /// Starts counting for `pids` (name, pid).
    pub fn start(pids: Vec<(&'static str, u32)>) -> CpuMeter {
        CpuMeter {
            start: pids.iter().map(|(_, p)| cpu_seconds(*p)).collect(),
            pids,
            machine_start: machine_cpu_seconds(),
        }
    }

    /// CPU seconds since `start`: each process's (name, seconds), and the whole machine's.
    pub fn read(&self) -> (Vec<(&'static str, f64)>, f64) {
        let per = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((who, p), c0)| (*who, cpu_seconds(*p) - c0))
            .collect();
        (per, machine_cpu_seconds() - self.machine_start)
    }
}

/// Context switches (voluntary and not) of all the threads of a process: each is a thread
/// put to sleep or woken, which costs more than most of the work passed between threads.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Peak resident set (VmHWM) of a process, in kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The sum of the Prometheus samples whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Cores, CPU model and memory of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores, {cpu}, {mem_gib:.0} GiB")
}

/// CPU seconds spent by the whole machine (every process, user + system), from `/proc/stat`.
pub fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The process listening on TCP `port` of 127.0.0.1 (found through its socket's inode).
pub fn pid_listening(port: u16) -> Option<u32> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| f.get(9).copied())?
    })?;
    let socket = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == socket) {
                return Some(pid);
            }
        }
    }
    None
}

/// The `main` of a benchmark: under `cargo bench` (`--bench` in the arguments) runs `run(n)` on
/// a two-thread runtime, with `n` from the environment variable `var` (else `default`); under
/// `cargo test` only says how to run it.
pub fn bench_main<F, Fut>(name: &str, var: &str, default: u64, run: F)
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} benchmark: run it with `cargo bench --bench {name}`");
        return;
    }
    let n = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(n));
}
