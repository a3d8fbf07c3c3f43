//! How much memory glommio may register with io_uring. Each executor registers `io_memory`
//! in three rings; without CAP_IPC_LOCK that is charged to RLIMIT_MEMLOCK, and glommio fails
//! hard below 512 KiB. So: full size when locked memory is unlimited, else what fits.

/// glommio's default and our ceiling per executor, bytes.
pub const IO_MEMORY_DEFAULT_BYTES: u64 = 10 << 20;
/// Below this glommio cannot start an executor, bytes.
pub const IO_MEMORY_MIN_BYTES: u64 = 512 << 10;
/// Rings per executor that register io_memory.
const RINGS_PER_EXECUTOR: u64 = 3;

/// The choice and why it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMemory {
    pub bytes_per_executor: u64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "locked-memory limit RLIMIT_MEMLOCK = {limit_bytes} bytes is too small for {shards} shards \
     (each needs 3 x {min} bytes of io_uring memory). Fix: run as root or with CAP_IPC_LOCK, \
     raise the limit (ulimit -l / LimitMEMLOCK=), or use fewer shards"
)]
pub struct MemlockTooSmall {
    pub limit_bytes: u64,
    pub shards: usize,
    pub min: u64,
}

/// Whether this process holds CAP_IPC_LOCK (root normally does), from /proc/self/status.
pub fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The soft RLIMIT_MEMLOCK, bytes (`None` = unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur)
    }
}

/// Chooses io_memory per executor. `configured` > 0 is taken as it is.
pub fn choose(
    configured: u64,
    shards: usize,
    ipc_lock: bool,
    limit: Option<u64>,
) -> Result<IoMemory, MemlockTooSmall> {
    if configured > 0 {
        return Ok(IoMemory {
            bytes_per_executor: configured,
            reason: "set by runtime.io_memory_bytes".into(),
        });
    }
    let Some(limit_bytes) = limit.filter(|_| !ipc_lock) else {
        let why = if ipc_lock {
            "CAP_IPC_LOCK held"
        } else {
            "RLIMIT_MEMLOCK unlimited"
        };
        return Ok(IoMemory {
            bytes_per_executor: IO_MEMORY_DEFAULT_BYTES,
            reason: format!("{why}: glommio default"),
        });
    };
    // Leave a quarter of the limit for everything else that locks memory.
    let share = limit_bytes * 3 / 4 / (RINGS_PER_EXECUTOR * shards as u64);
    let bytes = (share / 4096 * 4096).min(IO_MEMORY_DEFAULT_BYTES);
    if bytes < IO_MEMORY_MIN_BYTES {
        return Err(MemlockTooSmall {
            limit_bytes,
            shards,
            min: IO_MEMORY_MIN_BYTES,
        });
    }
    Ok(IoMemory {
        bytes_per_executor: bytes,
        reason: format!(
            "no CAP_IPC_LOCK: sized to fit RLIMIT_MEMLOCK = {limit_bytes} bytes over {shards} shards"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_unlimited_gets_the_default() {
        assert_eq!(
            choose(0, 2, true, Some(8 << 20))
                .unwrap()
                .bytes_per_executor,
            10 << 20
        );
        assert_eq!(
            choose(0, 2, false, None).unwrap().bytes_per_executor,
            10 << 20
        );
    }

    #[test]
    fn unprivileged_fits_the_limit() {
        let m = choose(0, 2, false, Some(8 << 20)).unwrap();
        assert!(m.bytes_per_executor * 3 * 2 <= 8 << 20, "{m:?}");
        assert!(m.bytes_per_executor >= IO_MEMORY_MIN_BYTES);
        assert!(m.reason.contains("RLIMIT_MEMLOCK"));
    }

    #[test]
    fn too_small_a_limit_is_an_error_naming_the_fix() {
        let err = choose(0, 64, false, Some(8 << 20)).unwrap_err().to_string();
        assert!(
            err.contains("CAP_IPC_LOCK") && err.contains("ulimit"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_size_wins() {
        assert_eq!(
            choose(1 << 20, 2, false, Some(1))
                .unwrap()
                .bytes_per_executor,
            1 << 20
        );
    }
}
