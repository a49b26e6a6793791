//! Figures: latency percentiles, and what `/proc` says about a process and the machine.
//!
//! Shared with `peers-bench` (`crates/bench/peers`, by path), so it uses nothing of this
//! workspace: the CPU probe, which signs and verifies, is in `traffic.rs`.

use serde::Serialize;

/// Percentiles of a set of latencies, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub n: usize,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Percentiles {
    /// The percentiles of `samples` (nearest rank; sorts in place).
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Self {
            n: samples.len(),
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: samples[samples.len() - 1],
        }
    }

    /// `p50/p99` in milliseconds, for summary lines.
    pub fn p50_p99_ms(&self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!(
            "{:.2}/{:.2}",
            self.p50_us as f64 / 1e3,
            self.p99_us as f64 / 1e3
        )
    }

    /// `p50/p99/max` in milliseconds, for summary lines.
    pub fn ms(&self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!("{}/{:.2}", self.p50_p99_ms(), self.max_us as f64 / 1e3)
    }
}

/// Resident memory of a process, KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&s, "VmRSS")
}

/// The number in a `/proc/…/status` field (`Name:\t1234 kB` gives 1234).
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `/proc/PID/task/TID` directories of `pid`'s threads (those named `comm`, if given),
/// with their thread ids.
fn threads(pid: u32, comm: Option<&str>) -> impl Iterator<Item = (u32, std::path::PathBuf)> + '_ {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let path = t.path();
            if let Some(c) = comm {
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                if name.trim_end() != c {
                    return None;
                }
            }
            Some((tid, path))
        })
}

/// CPU time a process has used (user + system, all threads), seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// User + system time from a `/proc/…/stat` file (a process's, or one thread's under
/// `task/`), seconds.
fn stat_cpu_secs(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second for `/proc` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The 1-minute load average.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPU use of a process between two points, as a percentage of one core.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    stat: String,
    start: Option<f64>,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> Self {
        Self::at_path(format!("/proc/{pid}/stat"))
    }

    /// Starts measuring the thread of `pid` named `comm` (e.g. `hotline-store-w`), if there
    /// is one.
    pub fn thread(pid: u32, comm: &str) -> Option<Self> {
        threads(pid, Some(comm))
            .next()
            .map(|(_, t)| Self::at_path(t.join("stat").display().to_string()))
    }

    fn at_path(stat: String) -> Self {
        Self {
            start: stat_cpu_secs(&stat),
            stat,
            at: std::time::Instant::now(),
        }
    }

    /// CPU seconds used since `start`.
    pub fn seconds(&self) -> Option<f64> {
        Some(stat_cpu_secs(&self.stat)? - self.start?)
    }

    /// Percentage of one core used since `start` (100 = one core busy).
    pub fn percent(&self) -> Option<f64> {
        Some(self.seconds()? / self.at.elapsed().as_secs_f64() * 100.0)
    }
}

/// Voluntary context switches of a process's threads between two points: each is a thread
/// going to sleep (on a lock, a channel, I/O, the network), and most are followed by a
/// wake-up. On a virtual machine whose idle vCPUs halt, each wake-up onto an idle vCPU
/// costs tens of microseconds (BENCHMARKS-ROUNDS.md, fifteenth round). A change that adds
/// or removes a hand-off on a message's way shows in the count a message, which moves less
/// with the host's speed than the timings do (it still moves: a slower host batches more).
#[derive(Clone, Debug)]
pub struct SwitchMeter {
    pid: u32,
    /// Only threads with this name (`comm`), or all.
    comm: Option<String>,
    /// Each thread's count at the start, by thread id.
    start: std::collections::HashMap<u32, u64>,
}

impl SwitchMeter {
    /// Starts counting for every thread of `pid`, or (with `comm`) the threads so named.
    pub fn start(pid: u32, comm: Option<&str>) -> Self {
        let comm = comm.map(str::to_owned);
        Self {
            start: voluntary_switches(pid, comm.as_deref()),
            pid,
            comm,
        }
    }

    /// Switches since `start`: for each thread alive now, its count less its count at the
    /// start (a thread started since counts in full; one that has ended is not counted).
    /// `None` if the process has gone, or has no thread of that name.
    pub fn count(&self) -> Option<u64> {
        let now = voluntary_switches(self.pid, self.comm.as_deref());
        if now.is_empty() {
            return None;
        }
        Some(
            now.iter()
                .map(|(tid, n)| n.saturating_sub(self.start.get(tid).copied().unwrap_or(0)))
                .sum(),
        )
    }
}

/// `voluntary_ctxt_switches` of each thread of `pid` (those named `comm`, if given), by
/// thread id.
fn voluntary_switches(pid: u32, comm: Option<&str>) -> std::collections::HashMap<u32, u64> {
    threads(pid, comm)
        .filter_map(|(tid, t)| {
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            Some((tid, status_field(&status, "voluntary_ctxt_switches")?))
        })
        .collect()
}

/// The machine, for the report: cores, CPU model, memory.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            memory_mib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib / 1024)
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// The guest's halt-polling limit in nanoseconds, where the machine is a KVM guest idling
/// with `cpuidle-haltpoll`; `None` elsewhere (the setting does not apply).
///
/// With 0, an idle vCPU halts at once, and a thread woken onto it (a hand-off between
/// threads, or an I/O completion) waits for the host to run the vCPU again: about 25 µs more
/// per wake-up on the benchmark machine, several times on a message's way
/// (docs/BENCHMARKS-ROUNDS.md, fifteenth round). Printed with each run so that runs compare.
pub fn guest_halt_poll_ns() -> Option<u64> {
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").ok()?;
    if driver.trim() != "haltpoll" {
        return None;
    }
    std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `guest_halt_poll_ns` for a summary line: ` halt-poll 200us`, or nothing where it does not
/// apply.
pub fn halt_poll_label(ns: Option<u64>) -> String {
    ns.map(|ns| format!(" halt-poll {}us", ns / 1000))
        .unwrap_or_default()
}

/// Median time of an `fdatasync`'d 1 KiB append to a file in `dir`, milliseconds, over 20
/// tries: how fast the disk commits right now (other work on the machine changes it a lot).
pub fn fsync_probe_ms(dir: &std::path::Path) -> f64 {
    use std::io::Write as _;
    let path = dir.join(".fsync-probe");
    let run = || -> std::io::Result<Vec<u64>> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let block = [0x5Au8; 1024];
        let mut v = Vec::with_capacity(20);
        for _ in 0..20 {
            let t = std::time::Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            v.push(t.elapsed().as_micros() as u64);
        }
        Ok(v)
    };
    let r = run();
    let _ = std::fs::remove_file(&path);
    match r {
        Ok(mut v) => Percentiles::of(&mut v).p50_us as f64 / 1e3,
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_print_in_milliseconds() {
        let p = Percentiles {
            n: 3,
            p50_us: 1_234,
            p99_us: 5_678,
            max_us: 9_000,
        };
        assert_eq!(p.ms(), "1.23/5.68/9.00");
        assert_eq!(p.p50_p99_ms(), "1.23/5.68");
        assert_eq!(Percentiles::default().ms(), "-");
        assert_eq!(Percentiles::default().p50_p99_ms(), "-");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.n, p.p50_us, p.p99_us, p.max_us), (100, 50, 99, 100));
        assert_eq!(Percentiles::of(&mut []).n, 0);
    }

    #[test]
    fn halt_polling_is_printed_only_where_it_applies() {
        assert_eq!(halt_poll_label(Some(200_000)), " halt-poll 200us");
        assert_eq!(halt_poll_label(Some(0)), " halt-poll 0us");
        assert_eq!(halt_poll_label(None), "");
    }

    #[test]
    fn voluntary_switches_are_read_from_a_status_text() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(status_field(status, "voluntary_ctxt_switches"), Some(1234));
        assert_eq!(status_field("Name:\tx\n", "voluntary_ctxt_switches"), None);
        assert_eq!(status_field("VmRSS:\t   20480 kB\n", "VmRSS"), Some(20480));
    }

    /// A thread that waits on a channel 200 times, answered each time by this one, is seen
    /// to sleep; a name no thread has counts nothing.
    #[test]
    fn a_named_threads_sleeps_are_counted() {
        let (ask_tx, ask_rx) = std::sync::mpsc::channel::<()>();
        let (answer_tx, answer_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let t = std::thread::Builder::new()
            .name("switch-test".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                while ask_rx.recv().is_ok() {
                    let _ = answer_tx.send(());
                }
            })
            .expect("spawn");
        ready_rx.recv().expect("thread started");
        let pid = std::process::id();
        let named = SwitchMeter::start(pid, Some("switch-test"));
        let nobody = SwitchMeter::start(pid, Some("no-such-thread"));
        for _ in 0..200 {
            ask_tx.send(()).expect("ask");
            answer_rx.recv().expect("answer");
        }
        assert!(named.count().is_some_and(|n| n >= 1), "{:?}", named.count());
        assert_eq!(nobody.count(), None, "no thread of that name");
        assert!(SwitchMeter::start(pid, None).count().is_some());
        drop(ask_tx);
        t.join().expect("join");
    }

    #[test]
    fn a_thread_is_metered_by_its_name() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("meter-test".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                let _ = done_rx.recv();
            })
            .expect("spawn");
        ready_rx.recv().expect("thread started");
        let pid = std::process::id();
        let m = CpuMeter::thread(pid, "meter-test").expect("the named thread is found");
        assert!(m.seconds().is_some_and(|s| s >= 0.0));
        assert!(CpuMeter::thread(pid, "no-such-thread").is_none());
        assert!(CpuMeter::start(pid).seconds().is_some());
        drop(done_tx);
        t.join().expect("join");
    }
}
