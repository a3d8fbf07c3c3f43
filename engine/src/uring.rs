//! Is io_uring usable here? Probed with the io-uring crate before any executor starts, so a
//! machine without it gets one clear message naming the cause and the fix instead of a
//! glommio panic.

use io_uring::{IoUring, Probe, opcode};

/// What the probe found.
#[derive(Debug, Clone)]
pub struct UringReport {
    /// Opcodes the engine's runtime relies on, and whether the kernel has each.
    pub opcodes: Vec<(&'static str, bool)>,
    pub kernel: String,
    /// Whether rings can be made with `IORING_SETUP_COOP_TASKRUN` (Linux 5.19): the shards'
    /// rings then run completion work at their next kernel entry instead of taking an IPI
    /// per completion (the vendored glommio asks for it and falls back without it).
    pub coop_taskrun: bool,
}

impl UringReport {
    pub fn summary(&self) -> String {
        let missing: Vec<&str> = self
            .opcodes
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| *name)
            .collect();
        let coop = if self.coop_taskrun {
            "cooperative task running on"
        } else {
            "cooperative task running unavailable (Linux < 5.19): each completion interrupts its shard"
        };
        if missing.is_empty() {
            format!(
                "io_uring available (kernel {}), all {} probed opcodes, {coop}",
                self.kernel,
                self.opcodes.len()
            )
        } else {
            format!(
                "io_uring available (kernel {}), missing opcodes: {}, {coop}",
                self.kernel,
                missing.join(", ")
            )
        }
    }
}

/// Why io_uring cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is unavailable: {cause}. Fix: {fix}")]
pub struct UringUnavailable {
    pub cause: String,
    pub fix: String,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Sets up a small ring and asks the kernel which opcodes it supports.
pub fn probe() -> Result<UringReport, UringUnavailable> {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => return Err(explain(e, disabled)),
    };
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(UringUnavailable {
            cause: format!("the kernel refused IORING_REGISTER_PROBE ({e})"),
            fix: "use Linux 5.11 or newer".into(),
        });
    }
    let opcodes = vec![
        ("POLL_ADD", probe.is_supported(opcode::PollAdd::CODE)),
        ("POLL_REMOVE", probe.is_supported(opcode::PollRemove::CODE)),
        (
            "ASYNC_CANCEL",
            probe.is_supported(opcode::AsyncCancel::CODE),
        ),
        ("TIMEOUT", probe.is_supported(opcode::Timeout::CODE)),
        ("READ", probe.is_supported(opcode::Read::CODE)),
        ("WRITE", probe.is_supported(opcode::Write::CODE)),
        ("ACCEPT", probe.is_supported(opcode::Accept::CODE)),
        ("RECV", probe.is_supported(opcode::Recv::CODE)),
        ("SEND", probe.is_supported(opcode::Send::CODE)),
    ];
    let coop_taskrun = IoUring::<io_uring::squeue::Entry>::builder()
        .setup_coop_taskrun()
        .build(8)
        .is_ok();
    Ok(UringReport {
        opcodes,
        kernel: kernel_release(),
        coop_taskrun,
    })
}

fn explain(e: std::io::Error, disabled: Option<u32>) -> UringUnavailable {
    let errno = e.raw_os_error().unwrap_or(0);
    match (errno, disabled) {
        (_, Some(2)) => UringUnavailable {
            cause: "the kernel has io_uring switched off (kernel.io_uring_disabled = 2)".into(),
            fix: "sysctl -w kernel.io_uring_disabled=0".into(),
        },
        (libc::EPERM, Some(1)) => UringUnavailable {
            cause: "kernel.io_uring_disabled = 1 limits io_uring to the group in \
                    kernel.io_uring_group, and this user is not in it"
                .into(),
            fix:
                "run as root, add this user to that group, or sysctl -w kernel.io_uring_disabled=0"
                    .into(),
        },
        (libc::ENOSYS, _) => UringUnavailable {
            cause: format!(
                "io_uring_setup is not implemented (kernel {} too old, or filtered by a \
                 container's seccomp profile)",
                kernel_release()
            ),
            fix: "use Linux 5.11 or newer; in a container, allow io_uring_setup/enter/register \
                  in the seccomp profile (e.g. docker --security-opt seccomp=unconfined)"
                .into(),
        },
        (libc::EPERM, _) => UringUnavailable {
            cause: "io_uring_setup was refused (EPERM): a seccomp filter or LSM blocks it".into(),
            fix: "allow io_uring_setup/enter/register in the container's seccomp profile or \
                  the security module's policy"
                .into(),
        },
        (libc::ENOMEM, _) => UringUnavailable {
            cause: "io_uring_setup ran out of locked memory (ENOMEM)".into(),
            fix: "raise RLIMIT_MEMLOCK (ulimit -l) or run as root".into(),
        },
        _ => UringUnavailable {
            cause: format!("io_uring_setup failed: {e}"),
            fix: "check dmesg".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_each_known_cause() {
        let e = |errno| std::io::Error::from_raw_os_error(errno);
        assert!(
            explain(e(libc::EPERM), Some(2))
                .to_string()
                .contains("io_uring_disabled = 2")
        );
        assert!(
            explain(e(libc::EPERM), Some(1))
                .to_string()
                .contains("io_uring_group")
        );
        assert!(
            explain(e(libc::ENOSYS), Some(0))
                .to_string()
                .contains("seccomp")
        );
        assert!(
            explain(e(libc::EPERM), Some(0))
                .to_string()
                .contains("EPERM")
        );
    }

    #[test]
    fn this_machine_has_io_uring() {
        // The engine's own tests need io_uring; if this fails, the message says why.
        let report = probe().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.opcodes.iter().all(|(_, ok)| *ok),
            "{}",
            report.summary()
        );
        // From Linux 5.19 the shards' rings get cooperative task running (older kernels
        // serve without it, through the vendored glommio's fallback).
        let release = kernel_release();
        let mut version = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        if (major, minor) >= (5, 19) {
            assert!(report.coop_taskrun, "{}", report.summary());
        }
    }
}
