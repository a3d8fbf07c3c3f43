//! verdict-probes owns verdict's eBPF programs and their loader: the kernel half of the
//! metrics plane. It measures what the server cannot see from user space and is read by the
//! control thread; the data path never touches it.
//!
//! The programs are C (`bpf/verdict.bpf.c`), compiled by clang in `build.rs` against the
//! committed `bpf/vmlinux.h` (CO-RE), embedded in this crate and loaded with aya 0.14. Every
//! counter lives in a per-CPU map (no atomics shared between CPUs, no ring buffers, nothing
//! to drain); [`Probes::read`] reads each map with one syscall and returns one
//! [`CpuKernel`] per possible CPU.
//!
//! # Groups
//! Each [`Group`] loads and attaches on its own: a tracepoint missing from the running kernel
//! turns off only its group, and [`Probes::status`] says why.
//!
//! | group | tracepoints | scope | measures |
//! |---|---|---|---|
//! | `runqueue` | `tp_btf/sched_wakeup`, `sched_wakeup_new`, `sched_switch` | target process | run-queue delay of its threads: from wake-up (or preemption while still runnable) to running, ns, log2 histogram |
//! | `io_uring` | `tp_btf/io_uring_submit_req`, `io_uring_complete` | target process | requests submitted / completions posted |
//! | `tcp_retransmit` | `tp_btf/tcp_retransmit_skb` | **host-wide** | TCP segments retransmitted |
//! | `softirq` | `tp_btf/softirq_entry`, `softirq_exit` | **host-wide** | ns spent in softirqs, and their count |
//! | `syscalls` | `tp_btf/sys_enter`, `sys_exit` | target process | syscall latency, ns, log2 histogram (**opt-in**) |
//!
//! "Target process" means threads whose tgid is [`ProbeOptions::tgid`], fixed at load time in
//! the programs' `.rodata`. Retransmits run from timers and softirqs in whatever context the
//! CPU happens to be in, so they cannot be charged to our process cheaply: that counter and
//! the softirq time are for the whole host, attributed to the CPU they happened on. The
//! run-queue and syscall delays are counted on the CPU where the thread ran next / returned.
//!
//! Histograms have [`LOG2_BUCKETS`] buckets: bucket `i` counts values in `[2^i, 2^(i+1))` ns;
//! bucket 0 also holds 0 and 1 ns; the last bucket holds everything from `2^39` ns (~9 min).
//!
//! # Costs
//! - `runqueue`: a few map operations per context switch of any task on the host (the tgid
//!   test is first; only our threads touch the hash map). `softirq`: two map lookups per
//!   softirq. `io_uring`: one lookup per request of ours. `tcp_retransmit`: negligible.
//! - `syscalls` is off unless [`ProbeOptions::syscalls`] is set: a syscall tracepoint slows
//!   every syscall on the host (measured +50 to +270 ns), not only ours.
//! - Memory: two 16384-entry hash maps (thread id -> start time) and a few hundred bytes per
//!   CPU. Loading and attaching takes tens of milliseconds (vmlinux BTF is parsed).
//!
//! # Privileges
//! Needs root, or CAP_BPF + CAP_PERFMON, and the kernel's BTF at `/sys/kernel/btf/vmlinux`.
//! Without them [`Probes::load`] still succeeds: every group is inactive with the reason.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::Path;

use aya::maps::{PerCpuArray, PerCpuValues};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader, Pod};

/// Number of log2 histogram buckets (see the crate docs for their bounds).
pub const LOG2_BUCKETS: usize = 40;

/// Where the kernel exposes its own BTF; the `tp_btf` programs cannot load without it.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The reason given for every group when the kernel refuses `bpf()` for lack of privileges.
pub const NEEDS_PRIVILEGES: &str = "eBPF unavailable: needs root or CAP_BPF+CAP_PERFMON";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/verdict.bpf.o"));

// Map names in bpf/verdict.bpf.c.
const MAP_RUNQ_HIST: &str = "runq_hist";
const MAP_IOU_COUNTS: &str = "iou_counts";
const MAP_TCP_RETX: &str = "tcp_retx";
const MAP_SOFTIRQ_TIME: &str = "softirq_time";
const MAP_SYS_HIST: &str = "sys_hist";

/// A set of programs that is loaded, attached and reported together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Run-queue delay of the target process's threads.
    RunQueue,
    /// io_uring submissions and completions of the target process.
    IoUring,
    /// TCP retransmits, host-wide.
    TcpRetransmit,
    /// Time in softirqs, host-wide.
    Softirq,
    /// Syscall latency of the target process (opt-in).
    Syscalls,
}

impl Group {
    /// Every group, in reporting order.
    pub const ALL: [Self; 5] = [
        Self::RunQueue,
        Self::IoUring,
        Self::TcpRetransmit,
        Self::Softirq,
        Self::Syscalls,
    ];

    /// Stable lower-case name, used in configuration and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::RunQueue => "runqueue",
            Self::IoUring => "io_uring",
            Self::TcpRetransmit => "tcp_retransmit",
            Self::Softirq => "softirq",
            Self::Syscalls => "syscalls",
        }
    }

    /// Whether the group only counts the target process (otherwise it is host-wide).
    pub fn per_process(self) -> bool {
        matches!(self, Self::RunQueue | Self::IoUring | Self::Syscalls)
    }

    /// (program function name in the object, BTF tracepoint name).
    fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::RunQueue => &[
                ("verdict_sched_wakeup", "sched_wakeup"),
                ("verdict_sched_wakeup_new", "sched_wakeup_new"),
                ("verdict_sched_switch", "sched_switch"),
            ],
            Self::IoUring => &[
                ("verdict_io_uring_submit_req", "io_uring_submit_req"),
                ("verdict_io_uring_complete", "io_uring_complete"),
            ],
            Self::TcpRetransmit => &[("verdict_tcp_retransmit_skb", "tcp_retransmit_skb")],
            Self::Softirq => &[
                ("verdict_softirq_entry", "softirq_entry"),
                ("verdict_softirq_exit", "softirq_exit"),
            ],
            Self::Syscalls => &[
                ("verdict_sys_enter", "sys_enter"),
                ("verdict_sys_exit", "sys_exit"),
            ],
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a group is running and, if not, why.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub group: Group,
    pub active: bool,
    /// Empty when active; otherwise one sentence saying why not.
    pub reason: String,
}

/// What to load.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// The process (thread group id) whose threads the per-process groups follow.
    pub tgid: u32,
    /// Load the `syscalls` group (costs every syscall on the host; see the crate docs).
    pub syscalls: bool,
}

/// One CPU's kernel counters, cumulative since the probes were loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuKernel {
    pub cpu: u32,
    /// Run-queue delay of the target's threads, ns, log2 buckets.
    pub runq_delay_ns_log2: [u64; LOG2_BUCKETS],
    /// io_uring requests submitted by the target process.
    pub io_uring_submits: u64,
    /// io_uring completions posted for the target process (counted in the posting thread).
    pub io_uring_completions: u64,
    /// TCP retransmits on this CPU, host-wide.
    pub tcp_retransmits: u64,
    /// Nanoseconds this CPU spent in softirqs, host-wide.
    pub softirq_ns: u64,
    /// Softirqs run on this CPU, host-wide.
    pub softirqs: u64,
    /// Syscall latency of the target's threads, ns, log2 buckets (opt-in group).
    pub syscall_ns_log2: [u64; LOG2_BUCKETS],
}

impl Default for CpuKernel {
    fn default() -> Self {
        Self {
            cpu: 0,
            runq_delay_ns_log2: [0; LOG2_BUCKETS],
            io_uring_submits: 0,
            io_uring_completions: 0,
            tcp_retransmits: 0,
            softirq_ns: 0,
            softirqs: 0,
            syscall_ns_log2: [0; LOG2_BUCKETS],
        }
    }
}

/// Upper bound (exclusive) of log2 bucket `i`, in ns; `u64::MAX` for the open last bucket.
pub fn log2_bucket_upper_ns(i: usize) -> u64 {
    if i + 1 >= LOG2_BUCKETS {
        u64::MAX
    } else {
        1u64 << (i + 1)
    }
}

/// Number of samples in a log2 histogram.
pub fn log2_count(hist: &[u64; LOG2_BUCKETS]) -> u64 {
    hist.iter().fold(0u64, |sum, &n| sum.saturating_add(n))
}

/// Upper bound of the bucket holding quantile `q` (clamped to 0..=1) of a log2 histogram;
/// 0 if it is empty.
pub fn log2_quantile_ns(hist: &[u64; LOG2_BUCKETS], q: f64) -> u64 {
    let total = log2_count(hist);
    if total == 0 {
        return 0;
    }
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    // Rank of the sample (1-based) holding the quantile.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        seen = seen.saturating_add(n);
        if seen >= rank {
            return log2_bucket_upper_ns(i);
        }
    }
    log2_bucket_upper_ns(LOG2_BUCKETS - 1)
}

impl CpuKernel {
    /// Upper bound (ns) of the run-queue-delay bucket holding quantile `q`; 0 if empty.
    pub fn runq_delay_quantile_ns(&self, q: f64) -> u64 {
        log2_quantile_ns(&self.runq_delay_ns_log2, q)
    }

    /// Number of run-queue delays recorded.
    pub fn runq_delays(&self) -> u64 {
        log2_count(&self.runq_delay_ns_log2)
    }

    /// Upper bound (ns) of the syscall-latency bucket holding quantile `q`; 0 if empty.
    pub fn syscall_quantile_ns(&self, q: f64) -> u64 {
        log2_quantile_ns(&self.syscall_ns_log2, q)
    }

    /// Number of syscalls recorded.
    pub fn syscalls(&self) -> u64 {
        log2_count(&self.syscall_ns_log2)
    }

    /// Counter-wise `self - earlier` (saturating), keeping `self.cpu`.
    pub fn since(&self, earlier: &Self) -> Self {
        let hist = |a: &[u64; LOG2_BUCKETS], b: &[u64; LOG2_BUCKETS]| {
            std::array::from_fn(|i| a[i].saturating_sub(b[i]))
        };
        Self {
            cpu: self.cpu,
            runq_delay_ns_log2: hist(&self.runq_delay_ns_log2, &earlier.runq_delay_ns_log2),
            io_uring_submits: self
                .io_uring_submits
                .saturating_sub(earlier.io_uring_submits),
            io_uring_completions: self
                .io_uring_completions
                .saturating_sub(earlier.io_uring_completions),
            tcp_retransmits: self.tcp_retransmits.saturating_sub(earlier.tcp_retransmits),
            softirq_ns: self.softirq_ns.saturating_sub(earlier.softirq_ns),
            softirqs: self.softirqs.saturating_sub(earlier.softirqs),
            syscall_ns_log2: hist(&self.syscall_ns_log2, &earlier.syscall_ns_log2),
        }
    }

    /// Counter-wise `self + other` (saturating), keeping `self.cpu`.
    fn add(&mut self, other: &Self) {
        for (a, b) in self
            .runq_delay_ns_log2
            .iter_mut()
            .zip(&other.runq_delay_ns_log2)
        {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.syscall_ns_log2.iter_mut().zip(&other.syscall_ns_log2) {
            *a = a.saturating_add(*b);
        }
        self.io_uring_submits = self.io_uring_submits.saturating_add(other.io_uring_submits);
        self.io_uring_completions = self
            .io_uring_completions
            .saturating_add(other.io_uring_completions);
        self.tcp_retransmits = self.tcp_retransmits.saturating_add(other.tcp_retransmits);
        self.softirq_ns = self.softirq_ns.saturating_add(other.softirq_ns);
        self.softirqs = self.softirqs.saturating_add(other.softirqs);
    }
}

/// Every CPU's counters at one instant.
#[derive(Debug, Clone, Default)]
pub struct KernelSnapshot {
    /// One per possible CPU; index = CPU id.
    pub cpus: Vec<CpuKernel>,
}

impl KernelSnapshot {
    /// All CPUs summed (`cpu` is 0).
    pub fn total(&self) -> CpuKernel {
        let mut total = CpuKernel::default();
        for cpu in &self.cpus {
            total.add(cpu);
        }
        total
    }

    /// Per-CPU `self - earlier` (saturating): the counts of the interval between two reads.
    pub fn since(&self, earlier: &Self) -> Self {
        let zero = CpuKernel::default();
        let cpus = self
            .cpus
            .iter()
            .enumerate()
            .map(|(i, now)| now.since(earlier.cpus.get(i).unwrap_or(&zero)))
            .collect();
        Self { cpus }
    }
}

/// The loaded programs and their maps. Dropping it detaches and unloads everything.
#[derive(Debug)]
pub struct Probes {
    ebpf: Option<Ebpf>,
    status: Vec<GroupStatus>,
}

// The engine keeps `Probes` in an `Arc<Mutex<..>>` shared by non-data threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Probes>();
};

impl Probes {
    /// Loads and attaches every enabled group. Never fails: each group's status says whether
    /// it runs and why not; when nothing could be loaded every group is inactive with the
    /// reason (no BTF, no privileges, ...).
    pub fn load(options: &ProbeOptions) -> Self {
        let inactive_all = |reason: &str| Self {
            ebpf: None,
            status: Group::ALL
                .iter()
                .map(|&group| GroupStatus {
                    group,
                    active: false,
                    reason: opted_out(group, options).unwrap_or_else(|| reason.to_owned()),
                })
                .collect(),
        };

        if !Path::new(VMLINUX_BTF).exists() {
            return inactive_all(&format!(
                "no BTF at {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF)"
            ));
        }
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(error) => {
                return inactive_all(&format!(
                    "cannot parse BTF at {VMLINUX_BTF}: {}",
                    error_chain(&error)
                ));
            }
        };
        let tgid = options.tgid;
        let loaded = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("target_tgid", &tgid, true)
            .load(OBJECT);
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(error) => return inactive_all(&failure("load eBPF object", &error)),
        };

        let status = Group::ALL
            .iter()
            .map(|&group| {
                let reason = match opted_out(group, options) {
                    Some(reason) => Err(reason),
                    None => attach_group(&mut ebpf, &btf, group),
                };
                match reason {
                    Ok(()) => GroupStatus {
                        group,
                        active: true,
                        reason: String::new(),
                    },
                    Err(reason) => GroupStatus {
                        group,
                        active: false,
                        reason,
                    },
                }
            })
            .collect();
        Self {
            ebpf: Some(ebpf),
            status,
        }
    }

    /// One entry per group, in [`Group::ALL`] order.
    pub fn status(&self) -> &[GroupStatus] {
        &self.status
    }

    /// Whether `group` is attached.
    pub fn is_active(&self, group: Group) -> bool {
        self.status
            .iter()
            .any(|status| status.group == group && status.active)
    }

    /// Whether any group is attached.
    pub fn any_active(&self) -> bool {
        self.status.iter().any(|status| status.active)
    }

    /// Reads every per-CPU map now (one `bpf()` syscall per active group). Inactive groups,
    /// and a map that cannot be read, read as zeros.
    pub fn read(&self) -> KernelSnapshot {
        let nr_cpus = aya::util::nr_cpus().unwrap_or(0);
        let mut cpus: Vec<CpuKernel> = (0..nr_cpus)
            .map(|cpu| CpuKernel {
                cpu: cpu as u32,
                ..CpuKernel::default()
            })
            .collect();
        let Some(ebpf) = &self.ebpf else {
            return KernelSnapshot { cpus };
        };

        if self.is_active(Group::RunQueue) {
            for_each_cpu::<[u64; LOG2_BUCKETS]>(ebpf, MAP_RUNQ_HIST, &mut cpus, |c, v| {
                c.runq_delay_ns_log2 = *v;
            });
        }
        if self.is_active(Group::IoUring) {
            for_each_cpu::<[u64; 2]>(ebpf, MAP_IOU_COUNTS, &mut cpus, |c, v| {
                c.io_uring_submits = v[0];
                c.io_uring_completions = v[1];
            });
        }
        if self.is_active(Group::TcpRetransmit) {
            for_each_cpu::<u64>(ebpf, MAP_TCP_RETX, &mut cpus, |c, v| {
                c.tcp_retransmits = *v;
            });
        }
        if self.is_active(Group::Softirq) {
            for_each_cpu::<[u64; 2]>(ebpf, MAP_SOFTIRQ_TIME, &mut cpus, |c, v| {
                c.softirq_ns = v[0];
                c.softirqs = v[1];
            });
        }
        if self.is_active(Group::Syscalls) {
            for_each_cpu::<[u64; LOG2_BUCKETS]>(ebpf, MAP_SYS_HIST, &mut cpus, |c, v| {
                c.syscall_ns_log2 = *v;
            });
        }
        KernelSnapshot { cpus }
    }
}

/// The reason a group is off by configuration, if it is.
fn opted_out(group: Group, options: &ProbeOptions) -> Option<String> {
    if group == Group::Syscalls && !options.syscalls {
        return Some("off (probes.syscalls = false)".to_owned());
    }
    if group.per_process() && options.tgid == 0 {
        return Some("off (no target process: tgid = 0)".to_owned());
    }
    None
}

/// Loads and attaches every program of `group`; on failure unloads the group's programs
/// (so none of them runs half a group) and returns the reason.
fn attach_group(ebpf: &mut Ebpf, btf: &Btf, group: Group) -> Result<(), String> {
    let result = group
        .programs()
        .iter()
        .try_for_each(|&(function, tracepoint)| {
            let what = format!("tp_btf/{tracepoint}");
            let program: &mut BtfTracePoint = ebpf
                .program_mut(function)
                .ok_or_else(|| format!("load {what}: program {function} missing from the object"))?
                .try_into()
                .map_err(|error| failure(&format!("load {what}"), &error))?;
            program
                .load(tracepoint, btf)
                .map_err(|error| failure(&format!("load {what}"), &error))?;
            program
                .attach()
                .map_err(|error| failure(&format!("attach {what}"), &error))?;
            Ok(())
        });
    if result.is_err() {
        for &(function, _) in group.programs() {
            if let Some(program) = ebpf.program_mut(function)
                && let Ok(program) = <&mut BtfTracePoint>::try_from(program)
            {
                // Not loaded (the failing one, or one after it) is the only error: ignore it.
                let _unloaded = program.unload();
            }
        }
    }
    result
}

/// Copies one per-CPU map (single entry, key 0) into `cpus` with `set`.
fn for_each_cpu<V: Pod>(
    ebpf: &Ebpf,
    name: &str,
    cpus: &mut [CpuKernel],
    mut set: impl FnMut(&mut CpuKernel, &V),
) {
    let values: Option<PerCpuValues<V>> = ebpf
        .map(name)
        .and_then(|map| PerCpuArray::<_, V>::try_from(map).ok())
        .and_then(|array| array.get(&0, 0).ok());
    if let Some(values) = values {
        for (cpu, value) in cpus.iter_mut().zip(values.iter()) {
            set(cpu, value);
        }
    }
}

/// A status sentence for an error: the privilege sentence when the kernel said EPERM
/// anywhere in the chain, else `what: <error chain>`, shortened (verifier logs are long).
fn failure(what: &str, error: &(dyn Error + 'static)) -> String {
    const MAX: usize = 400;
    let chain = error_chain(error);
    let mut reason = if is_eperm(error) {
        format!("{NEEDS_PRIVILEGES} ({what}: {chain})")
    } else {
        format!("{what}: {chain}")
    };
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// Whether an `io::Error` with EPERM is in the source chain (aya reports a refused map
/// creation as `MapError::CreateError { io_error }`, a refused BTF or program load likewise).
/// EACCES is not a privilege problem here: the verifier uses it to reject a program.
fn is_eperm(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io_error) = error.downcast_ref::<io::Error>()
            && io_error.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// `error: source: source...`, skipping a source whose text its parent already shows
/// (aya's errors often embed their source).
fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = source.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::maps::MapError;

    #[test]
    fn quantiles_use_bucket_upper_bounds() {
        let mut hist = [0u64; LOG2_BUCKETS];
        assert_eq!(log2_quantile_ns(&hist, 0.99), 0);
        hist[3] = 90; // [8, 16) ns
        hist[10] = 10; // [1024, 2048) ns
        assert_eq!(log2_count(&hist), 100);
        assert_eq!(log2_quantile_ns(&hist, 0.0), 16);
        assert_eq!(log2_quantile_ns(&hist, 0.5), 16);
        assert_eq!(log2_quantile_ns(&hist, 0.9), 16);
        assert_eq!(log2_quantile_ns(&hist, 0.91), 2048);
        assert_eq!(log2_quantile_ns(&hist, 1.0), 2048);
        hist[LOG2_BUCKETS - 1] = 1;
        assert_eq!(log2_quantile_ns(&hist, 1.0), u64::MAX);
    }

    #[test]
    fn snapshots_subtract_and_sum() {
        let mut a = CpuKernel {
            cpu: 1,
            softirqs: 5,
            ..CpuKernel::default()
        };
        a.runq_delay_ns_log2[2] = 7;
        let b = CpuKernel {
            cpu: 1,
            softirqs: 2,
            ..CpuKernel::default()
        };
        let d = a.since(&b);
        assert_eq!((d.cpu, d.softirqs, d.runq_delays()), (1, 3, 7));
        let snap = KernelSnapshot {
            cpus: vec![a.clone(), a],
        };
        assert_eq!(snap.total().softirqs, 10);
        assert_eq!(
            snap.since(&KernelSnapshot::default()).total().runq_delays(),
            14
        );
    }

    #[test]
    fn eperm_anywhere_in_the_chain_is_a_privilege_problem() {
        let error = aya::EbpfError::MapError(MapError::CreateError {
            name: "runq_start".to_owned(),
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        let reason = failure("load eBPF object", &error);
        assert!(reason.starts_with(NEEDS_PRIVILEGES), "{reason}");
        assert!(reason.contains("Operation not permitted"), "{reason}");
        let other = aya::EbpfError::MapError(MapError::CreateError {
            name: "runq_start".to_owned(),
            io_error: io::Error::from_raw_os_error(libc::ENOMEM),
        });
        assert!(!failure("load", &other).starts_with(NEEDS_PRIVILEGES));
    }
}
