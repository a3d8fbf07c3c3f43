//! Loads the real programs into the running kernel, makes each group's event happen and
//! checks that its counters moved. Needs root (CI runs as root); without it the attach parts
//! are skipped with a message, and the unprivileged test still runs.
//!
//! Tests are serialised (one lock) so that the busy threads of one do not distort another
//! and the whole file stays within a few seconds.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use verdict_probes::{Group, KernelSnapshot, NEEDS_PRIVILEGES, ProbeOptions, Probes};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True when root; otherwise says which test skips its attach part.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "{test}: skipping the attach part: not root (eBPF needs root or CAP_BPF+CAP_PERFMON)"
        );
    }
    root
}

fn load(syscalls: bool) -> Probes {
    let started = Instant::now();
    let probes = Probes::load(&ProbeOptions {
        tgid: std::process::id(),
        syscalls,
    });
    eprintln!(
        "Probes::load(syscalls = {syscalls}) took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for status in probes.status() {
        eprintln!(
            "  {:<15} active={} {}",
            status.group.name(),
            status.active,
            status.reason
        );
    }
    probes
}

fn assert_active(probes: &Probes, group: Group) {
    let status = probes
        .status()
        .iter()
        .find(|status| status.group == group)
        .expect("every group has a status");
    assert!(status.active, "{group} inactive: {}", status.reason);
}

fn total(probes: &Probes) -> verdict_probes::CpuKernel {
    probes.read().total()
}

#[test]
fn every_group_loads_and_attaches_as_root() {
    let _serial = serial();
    if !root_or_skip("every_group_loads_and_attaches_as_root") {
        return;
    }
    let probes = load(true);
    for group in Group::ALL {
        assert_active(&probes, group);
    }
    assert!(probes.any_active());
    let snapshot: KernelSnapshot = probes.read();
    let possible = aya_possible_cpus();
    assert_eq!(snapshot.cpus.len(), possible, "one entry per possible CPU");
    for (i, cpu) in snapshot.cpus.iter().enumerate() {
        assert_eq!(cpu.cpu as usize, i);
    }
}

/// Number of possible CPUs, from the same sysfs file aya reads.
fn aya_possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .expect("read /sys/devices/system/cpu/possible");
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>().expect("cpu id") - a.parse::<usize>().expect("cpu id") + 1
            }
            None => 1,
        })
        .sum()
}

#[test]
fn runqueue_delay_grows_when_threads_outnumber_cpus() {
    let _serial = serial();
    if !root_or_skip("runqueue_delay_grows_when_threads_outnumber_cpus") {
        return;
    }
    let probes = load(false);
    assert_active(&probes, Group::RunQueue);
    let before = total(&probes);

    let cpus = thread::available_parallelism().map_or(2, usize::from);
    let deadline = Instant::now() + Duration::from_millis(300);
    let busy: Vec<_> = (0..cpus * 2 + 1)
        .map(|_| {
            thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < deadline {
                    for i in 0..1000u64 {
                        x = black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                x
            })
        })
        .collect();
    for thread in busy {
        black_box(thread.join().expect("busy thread"));
    }

    let grown = total(&probes).since(&before);
    eprintln!(
        "run-queue delays: {} (p50 <= {} ns, p99 <= {} ns)",
        grown.runq_delays(),
        grown.runq_delay_quantile_ns(0.5),
        grown.runq_delay_quantile_ns(0.99)
    );
    assert!(grown.runq_delays() > 0, "no run-queue delay recorded");
    assert!(grown.runq_delay_quantile_ns(0.99) > 0);
}

#[test]
fn io_uring_nops_are_counted() {
    const NOPS: u64 = 1000;
    let _serial = serial();
    if !root_or_skip("io_uring_nops_are_counted") {
        return;
    }
    let probes = load(false);
    assert_active(&probes, Group::IoUring);
    // Same programs aimed at a process that cannot exist (above PID_MAX_LIMIT): proves the
    // target tgid reaches the programs' .rodata and filters.
    let nobody = Probes::load(&ProbeOptions {
        tgid: (1 << 22) + 1,
        syscalls: false,
    });
    assert_active(&nobody, Group::IoUring);
    let before = total(&probes);

    let mut ring = io_uring::IoUring::new(256)
        .expect("io_uring_setup (is io_uring disabled by kernel.io_uring_disabled?)");
    let mut submitted = 0u64;
    let mut completed = 0u64;
    while submitted < NOPS {
        let batch = (NOPS - submitted).min(256);
        for i in 0..batch {
            let nop = io_uring::opcode::Nop::new()
                .build()
                .user_data(submitted + i);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }.expect("submission queue has room");
        }
        ring.submit_and_wait(batch as usize)
            .expect("io_uring_enter");
        completed += ring
            .completion()
            .map(|cqe| assert_eq!(cqe.result(), 0))
            .count() as u64;
        submitted += batch;
    }
    assert_eq!(completed, NOPS);

    let grown = total(&probes).since(&before);
    eprintln!(
        "io_uring: {} submits, {} completions",
        grown.io_uring_submits, grown.io_uring_completions
    );
    // NOPs complete inline in the submitting thread (same tgid), each posting one CQE, so
    // both counters see every one. (Requests completed by io-wq workers also count: they are
    // threads of this process; completions posted from another process's context would not.)
    assert!(
        grown.io_uring_submits >= NOPS,
        "submits {}",
        grown.io_uring_submits
    );
    let other = total(&nobody);
    assert_eq!((other.io_uring_submits, other.io_uring_completions), (0, 0));
    assert!(
        grown.io_uring_completions >= NOPS,
        "completions {}",
        grown.io_uring_completions
    );
}

#[test]
fn loopback_tcp_traffic_shows_softirq_time() {
    const BYTES: usize = 8 << 20;
    let _serial = serial();
    if !root_or_skip("loopback_tcp_traffic_shows_softirq_time") {
        return;
    }
    let probes = load(false);
    assert_active(&probes, Group::Softirq);
    let before = total(&probes);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buf).expect("read") {
                0 => return total,
                n => total += n,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0x5au8; 64 << 10];
    for _ in 0..BYTES / chunk.len() {
        stream.write_all(&chunk).expect("write");
    }
    drop(stream);
    assert_eq!(reader.join().expect("reader"), BYTES);

    let grown = total(&probes).since(&before);
    eprintln!(
        "softirq: {} softirqs, {} ns",
        grown.softirqs, grown.softirq_ns
    );
    assert!(grown.softirqs > 0, "no softirq counted");
    assert!(grown.softirq_ns > 0, "no softirq time counted");
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = src as libc::c_char;
        }
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if result == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let error = io::Error::last_os_error();
        libc::close(fd);
        if result == 0 { Ok(()) } else { Err(error) }
    }
}

/// Makes the kernel retransmit a SYN: a listener whose accept queue is full (backlog 0, one
/// connection already queued and never accepted) silently drops further SYNs, so the next
/// client retransmits its SYN when the initial RTO (1 s) expires. netem and dummy devices
/// are not available here, and this needs neither. It runs in a fresh network namespace of
/// its own thread (network namespaces are per thread), falling back to the host's loopback
/// if unshare is refused. Returns when the client's connect gives up (after `give_up`).
fn force_syn_retransmit(give_up: Duration) {
    // SAFETY: unshare only changes this thread's network namespace.
    let own_namespace = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
    if own_namespace {
        loopback_up().expect("bring lo up in the new network namespace");
    } else {
        eprintln!(
            "unshare(CLONE_NEWNET) refused ({}); using the host loopback",
            io::Error::last_os_error()
        );
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    // SAFETY: re-listening on our own listening socket only changes its backlog.
    let relisten = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(
        relisten,
        0,
        "listen(backlog 0): {}",
        io::Error::last_os_error()
    );
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let _queued = TcpStream::connect(addr).expect("first connection fills the accept queue");
    // Let the handshake's final ACK put the first connection in the accept queue.
    thread::sleep(Duration::from_millis(20));
    let second = TcpStream::connect_timeout(&addr, give_up);
    assert!(second.is_err(), "the second SYN should have been dropped");
    drop(listener);
}

#[test]
fn tcp_retransmit_of_a_dropped_syn_is_counted() {
    let _serial = serial();
    if !root_or_skip("tcp_retransmit_of_a_dropped_syn_is_counted") {
        return;
    }
    let probes = load(false);
    assert_active(&probes, Group::TcpRetransmit);
    let before = total(&probes);

    let started = Instant::now();
    let client = thread::spawn(|| force_syn_retransmit(Duration::from_millis(1600)));
    let mut retransmits = 0;
    while started.elapsed() < Duration::from_secs(3) {
        retransmits = total(&probes).since(&before).tcp_retransmits;
        if retransmits > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    eprintln!(
        "tcp retransmits: {retransmits} after {:?}",
        started.elapsed()
    );
    client.join().expect("client thread");
    assert!(retransmits > 0, "no TCP retransmit counted within 3 s");
}

#[test]
fn syscall_group_is_opt_in_and_counts_getpid() {
    const CALLS: u64 = 10_000;
    let _serial = serial();
    if !root_or_skip("syscall_group_is_opt_in_and_counts_getpid") {
        return;
    }
    {
        let off = load(false);
        let status = &off.status()[4];
        assert_eq!(status.group, Group::Syscalls);
        assert!(!status.active);
        assert!(
            status.reason.contains("probes.syscalls"),
            "{}",
            status.reason
        );
        assert_eq!(
            off.read().total().syscalls(),
            0,
            "an inactive group reads as zeros"
        );
    }

    let probes = load(true);
    assert_active(&probes, Group::Syscalls);
    let before = total(&probes);
    for _ in 0..CALLS {
        // SAFETY: getpid has no preconditions (the raw syscall bypasses any libc caching).
        black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    let grown = total(&probes).since(&before);
    eprintln!(
        "syscalls: {} (p50 <= {} ns, p99 <= {} ns)",
        grown.syscalls(),
        grown.syscall_quantile_ns(0.5),
        grown.syscall_quantile_ns(0.99)
    );
    assert!(grown.syscalls() >= CALLS, "syscalls {}", grown.syscalls());
}

const CHILD_ENV: &str = "VERDICT_PROBES_UNPRIVILEGED_CHILD";
const CHILD_OK: &str = "unprivileged child: all groups inactive, reasons ok";

/// Re-runs this test binary (only this test) with every capability dropped, still as uid 0:
/// bounding set emptied, effective/permitted/inheritable cleared, no_new_privs set. The child
/// half (below, when CHILD_ENV is set) loads and checks every group reports the privilege
/// problem. Runs unprivileged too: the child is then unprivileged anyway.
#[test]
fn unprivileged_load_reports_missing_privileges() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return unprivileged_child();
    }
    let _serial = serial();
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .args([
            "unprivileged_load_reports_missing_privileges",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1");
    // SAFETY: the closure only makes raw prctl/capset syscalls (async-signal-safe).
    unsafe {
        command.pre_exec(drop_all_capabilities);
    }
    let output = command
        .output()
        .expect("run the test binary without capabilities");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("child stdout:\n{stdout}\nchild stderr:\n{stderr}");
    assert!(output.status.success(), "child failed: {}", output.status);
    assert!(stdout.contains(CHILD_OK), "child did not run its checks");
}

fn drop_all_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl/capset with valid pointers to live, correctly laid-out structs.
    unsafe {
        // Fails past the last capability and without CAP_SETPCAP: both fine.
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn unprivileged_child() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find(|line| line.starts_with("CapEff:"))
        .unwrap_or("CapEff: ?");
    println!("child {cap_eff}");
    assert!(
        cap_eff.ends_with("0000000000000000"),
        "capabilities not dropped: {cap_eff}"
    );

    let probes = Probes::load(&ProbeOptions {
        tgid: std::process::id(),
        syscalls: true,
    });
    assert!(!probes.any_active());
    for status in probes.status() {
        println!(
            "  {:<15} active={} {}",
            status.group.name(),
            status.active,
            status.reason
        );
        assert!(!status.active);
        assert!(
            status.reason.starts_with(NEEDS_PRIVILEGES),
            "{}: {}",
            status.group,
            status.reason
        );
    }
    let snapshot = probes.read();
    assert_eq!(snapshot.total(), verdict_probes::CpuKernel::default());
    println!("{CHILD_OK}");
}
