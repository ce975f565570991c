//! Running the tools under measurement: wall time and peak memory of child processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// What a finished command cost.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Wall time.
    pub wall: Duration,
    /// Peak resident set size in bytes (from GNU time).
    pub peak_rss: u64,
    /// User + system CPU time of the command (from GNU time).
    pub cpu: Duration,
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (without GNU time's line).
    pub stderr: String,
}

/// Runs `program args…` under `/usr/bin/time`, capturing output.
pub async fn measure(program: &Path, args: &[String]) -> Result<Measured> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("URLFLEET_BENCH_RSS_KB=%M\nURLFLEET_BENCH_CPU=%U %S")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let wall = started.elapsed();
    let stderr_all = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut peak_kb = 0u64;
    let mut cpu = Duration::ZERO;
    let mut stderr = String::new();
    for line in stderr_all.lines() {
        if let Some(kb) = line.strip_prefix("URLFLEET_BENCH_RSS_KB=") {
            peak_kb = kb.trim().parse().unwrap_or(0);
        } else if let Some(times) = line.strip_prefix("URLFLEET_BENCH_CPU=") {
            cpu = times.split_whitespace().filter_map(|t| t.parse::<f64>().ok()).map(Duration::from_secs_f64).sum();
        } else {
            stderr.push_str(line);
            stderr.push('\n');
        }
    }
    Ok(Measured {
        wall,
        peak_rss: peak_kb * 1024,
        cpu,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    })
}

/// A long-running child (coordinator, worker, nginx), killed on drop.
pub struct Service {
    child: Child,
    name: String,
}

impl Service {
    /// Starts `program args…` with output discarded (or to `log` when given).
    pub fn start(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file(name)?).kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { child, name: name.to_string() })
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches("kB").trim().to_string()))
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        self.child.id().map(|pid| process_cpu(&format!("/proc/{pid}/stat"))).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded); kills after that.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("{} did not stop within 15 s", self.name)
            }
        }
    }
}

/// Where a service's standard error goes: nowhere, or with `URLFLEET_BENCH_LOGS=dir` set, to a file
/// of its own there (`coordinator-1.log`, `worker-2.log`, …; the services read `RUST_LOG` as usual).
fn log_file(name: &str) -> Result<Stdio> {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("URLFLEET_BENCH_LOGS") else { return Ok(Stdio::null()) };
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let path = Path::new(&dir).join(format!("{name}-{n}.log"));
    std::fs::create_dir_all(&dir)?;
    Ok(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?.into())
}

/// Linux reports CPU times in USER_HZ ticks, 100 a second on every architecture it runs on.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(10 * n)
}

/// User + system CPU time of the process whose `stat` file is at `path` (all its threads).
pub fn process_cpu(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else { return Duration::ZERO };
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are plain.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 counting from the state (field 3).
    ticks([11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum())
}

/// User + system CPU time of every PostgreSQL server process now running (the server, its
/// background workers and every backend): read before and after a run, the difference is what the
/// database spent on it, as long as its connections lasted the run (a pool's do).
pub fn postgres_cpu() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|e| process_cpu(&e.path().join("stat").to_string_lossy()))
        .sum()
}

/// The machine's CPU time since boot: (busy, all), summed over its cores.
pub fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let counts: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is already counted in user).
    let all: u64 = counts.iter().take(8).sum();
    let idle: u64 = counts.iter().skip(3).take(2).sum();
    (ticks(all - idle), ticks(all))
}

/// The machine's busy share of its cores' time between two readings of [`machine_cpu`], in percent.
pub fn busy_percent(before: (Duration, Duration), after: (Duration, Duration)) -> f64 {
    100.0 * (after.0 - before.0).as_secs_f64() / (after.1 - before.1).as_secs_f64().max(1e-9)
}

/// A sibling binary of this one (the `urlfleet` build of the same profile).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if p.exists() { Ok(p) } else { bail!("{} not found next to {} (build the workspace first)", name, me.display()) }
}

/// A program on PATH (or in ~/.cargo/bin), if installed.
pub fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A free loopback port (bound then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_port(addr: &str, patience: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < patience {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after {patience:?}")
}
