//! What is measured besides the requests, read from outside the processes: CPU time and peak RSS from /proc,
//! the disk's rate of durable appends, the file system type and the commit measured.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::BODY_SIZE;

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmHWM` (peak RSS).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// User + system CPU seconds of a process (`self` or a pid), all threads.
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = text.rsplit_once(')').map(|(_, a)| a) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|&n| fields.get(n)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

/// CPU seconds of each process named `postgres` (the server and its backends, all databases), by pid.
pub fn postgres_cpu_by_pid() -> BTreeMap<String, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| {
            let cpu = cpu_secs(&pid);
            (pid, cpu)
        })
        .collect()
}

/// PostgreSQL's CPU seconds since a snapshot: on PostgreSQL, the database's share of the machine. A backend
/// that exited in between takes its time with it, so this is a lower bound (the service's pool keeps its
/// connections open).
pub fn postgres_cpu_since(before: &BTreeMap<String, f64>) -> f64 {
    postgres_cpu_by_pid()
        .iter()
        .map(|(pid, cpu)| (cpu - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// Busy CPU seconds of the whole machine (all cores, every process), from /proc/stat.
pub fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait (guest time is
    // already counted in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / clock_ticks()
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, else 100).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Appends of one event's size, each followed by fdatasync, for `secs`: what one durable commit per event
/// could at best do on this disk right now (virtual disks vary from minute to minute).
pub fn fsync_probe(dir: &Path, secs: f64) -> Option<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).ok()?;
    let block = [b'x'; BODY_SIZE];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&block).ok()?;
        f.sync_data().ok()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Some(rate)
}

/// `git` on the workspace, its output trimmed; empty when git fails.
pub fn git(args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The file system type of `dir`, e.g. "ext4".
pub fn fs_type(dir: &Path) -> String {
    // `findmnt` names ext4 as such; `stat -f` (the fallback) says "ext2/ext3" for all three.
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .arg(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    run("findmnt", &["-n", "-o", "FSTYPE", "--target"])
        .or_else(|| run("stat", &["-f", "-c", "%T"]))
        .unwrap_or_default()
}
