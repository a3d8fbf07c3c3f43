//! A core's instances of one model, and one call's protocol.
//!
//! **Reuse and reset.** An instance is reused across calls as it is: ABI v1 requires a
//! model's scores to depend on the rows of the call alone, so nothing is reset between calls
//! that return normally (the instance's memory keeps whatever the model left there). An
//! instance is thrown away, never reused, after anything that may have left it broken: a
//! trap, a deadline, an address outside its memory. The next ready instance takes over and
//! the pool is refilled from the `InstancePre` between batches ([`Pool::refill`]), so a
//! replacement never costs the event that failed.
//!
//! **Exhaustion.** A pool holds `instances_per_core` ready instances. If a model fails so
//! often within one batch that none is left, the remaining rows of that batch are not sent
//! to it: [`CallError::Exhausted`], the fallback score, at no cost. A model that traps on
//! every call therefore costs at most `instances_per_core` calls per batch.

use std::sync::Arc;

use wasmtime::{InstancePre, Memory, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc};

use crate::Model;

/// What a call's store holds: its resource limits.
pub struct StoreState {
    limits: StoreLimits,
}

/// Why a call produced no scores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Trap(String),
    #[error("deadline exceeded")]
    Timeout,
    /// The model returned a negative error code.
    #[error("returned error code {0}")]
    Code(i32),
    #[error("{what} at address {addr}: {len} bytes from there end past the memory's {size} bytes")]
    Bounds {
        what: &'static str,
        addr: i64,
        len: usize,
        size: usize,
    },
    #[error("row {row} scored {value}, not a finite number")]
    NotFinite { row: usize, value: f64 },
    /// No ready instance is left in this core's pool (see the module docs).
    #[error("no ready instance (the pool is exhausted until the next batch)")]
    Exhausted,
}

impl CallError {
    /// Whether the instance may be used again after this error.
    fn keeps_instance(&self) -> bool {
        matches!(self, CallError::Code(_) | CallError::NotFinite { .. })
    }
}

fn call_error(e: wasmtime::Error) -> CallError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout,
        Some(trap) => CallError::Trap(trap.to_string()),
        None => CallError::Trap(format!("{e}").lines().next().unwrap_or("").to_string()),
    }
}

/// One ready instance.
pub(crate) struct Slot {
    store: Store<StoreState>,
    abi: TypedFunc<(), i32>,
    input: TypedFunc<(i32, i32), i32>,
    score: TypedFunc<(i32, i32), i32>,
    memory: Memory,
}

impl Slot {
    pub fn new(pre: &InstancePre<StoreState>, memory_bytes_max: u64) -> Result<Slot, String> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes_max as usize)
            .instances(1)
            .memories(1)
            .tables(1)
            .build();
        let mut store = Store::new(pre.module().engine(), StoreState { limits });
        store.limiter(|s| &mut s.limits);
        // A new store's deadline is "now": arm it for the start function.
        store.set_epoch_deadline(1_000);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| format!("instantiating: {}", call_error(e)))?;
        let func = |store: &mut Store<StoreState>, name| {
            instance
                .get_typed_func::<(i32, i32), i32>(&mut *store, name)
                .map_err(|e| format!("{name}: {e:#}"))
        };
        let input = func(&mut store, "verdict_input")?;
        let score = func(&mut store, "verdict_score")?;
        let abi = instance
            .get_typed_func::<(), i32>(&mut store, "verdict_abi")
            .map_err(|e| format!("verdict_abi: {e:#}"))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("no memory export")?;
        Ok(Slot {
            store,
            abi,
            input,
            score,
            memory,
        })
    }

    pub fn abi_version(&mut self, ticks: u64) -> Result<i32, CallError> {
        self.store.set_epoch_deadline(ticks);
        self.abi.call(&mut self.store, ()).map_err(call_error)
    }

    /// Asks for the input region of `rows x cols` and checks it lies in memory.
    pub fn input_region(
        &mut self,
        rows: usize,
        cols: usize,
        ticks: u64,
    ) -> Result<usize, CallError> {
        self.store.set_epoch_deadline(ticks);
        let addr = self
            .input
            .call(&mut self.store, (rows as i32, cols as i32))
            .map_err(call_error)?;
        self.region("input", addr, rows * cols * 4)
    }

    fn region(&self, what: &'static str, addr: i32, len: usize) -> Result<usize, CallError> {
        if addr < 0 {
            return Err(CallError::Code(addr));
        }
        let size = self.memory.data_size(&self.store);
        let start = addr as usize;
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(CallError::Bounds {
                what,
                addr: i64::from(addr),
                len,
                size,
            });
        }
        Ok(start)
    }

    /// One call: writes the rows, scores them, reads one score per row.
    pub fn score(
        &mut self,
        rows: usize,
        cols: usize,
        input: &[f32],
        out: &mut [f64],
        ticks: u64,
    ) -> Result<(), CallError> {
        debug_assert_eq!(input.len(), rows * cols);
        let at = self.input_region(rows, cols, ticks)?;
        let memory = self.memory.data_mut(&mut self.store);
        for (dst, v) in memory[at..at + input.len() * 4]
            .chunks_exact_mut(4)
            .zip(input)
        {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        self.store.set_epoch_deadline(ticks);
        let addr = self
            .score
            .call(&mut self.store, (rows as i32, cols as i32))
            .map_err(call_error)?;
        let at = self.region("scores", addr, rows * 8)?;
        let memory = self.memory.data(&self.store);
        for (i, (src, o)) in memory[at..at + rows * 8]
            .chunks_exact(8)
            .zip(out.iter_mut())
            .enumerate()
        {
            let value = f64::from_le_bytes(src.try_into().expect("8 bytes"));
            if !value.is_finite() {
                return Err(CallError::NotFinite { row: i, value });
            }
            *o = value;
        }
        Ok(())
    }
}

/// What a pool has done (this core, this model, since the pool was made).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounters {
    pub calls: u64,
    pub rows: u64,
    pub traps: u64,
    pub timeouts: u64,
    /// Negative codes, out-of-bounds addresses, non-finite scores.
    pub errors: u64,
    /// Rows answered with the fallback because no instance was ready.
    pub exhausted_rows: u64,
    /// Instances made (the first fill and every replacement).
    pub instantiated: u64,
    pub instantiate_failures: u64,
}

/// One core's ready instances of one model.
pub struct Pool {
    model: Arc<Model>,
    ready: Vec<Slot>,
    pub counters: PoolCounters,
    /// Why the last instantiation failed, if it did.
    pub last_failure: Option<String>,
}

impl Pool {
    /// A pool filled with `instances_per_core` instances.
    pub fn new(model: Arc<Model>) -> Pool {
        let mut pool = Pool {
            ready: Vec::with_capacity(model.manifest.instances_per_core as usize),
            model,
            counters: PoolCounters::default(),
            last_failure: None,
        };
        pool.refill();
        pool
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Instances ready to take a call.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Makes instances until `instances_per_core` are ready; returns how many it made.
    pub fn refill(&mut self) -> usize {
        let mut made = 0;
        while self.ready.len() < self.model.manifest.instances_per_core as usize {
            match Slot::new(&self.model.pre, self.model.memory_bytes_max) {
                Ok(slot) => {
                    self.ready.push(slot);
                    self.counters.instantiated += 1;
                    made += 1;
                }
                Err(e) => {
                    self.counters.instantiate_failures += 1;
                    self.last_failure = Some(e);
                    break;
                }
            }
        }
        made
    }

    /// Scores `rows` rows (`input` is `rows x cols` features, row-major) into `out[..rows]`,
    /// under the model's deadline. `rows` is at most [`Model::rows_per_call_max`].
    pub fn score(&mut self, rows: usize, input: &[f32], out: &mut [f64]) -> Result<(), CallError> {
        let cols = self.model.cols();
        assert!(
            rows <= self.model.rows_per_call_max() && input.len() == rows * cols,
            "{rows} rows of {} values for a model of {cols} features",
            input.len()
        );
        let Some(mut slot) = self.ready.pop() else {
            self.counters.exhausted_rows += rows as u64;
            return Err(CallError::Exhausted);
        };
        self.counters.calls += 1;
        self.counters.rows += rows as u64;
        let result = slot.score(rows, cols, input, out, self.model.deadline_ticks);
        match &result {
            Ok(()) => {}
            Err(CallError::Timeout) => self.counters.timeouts += 1,
            Err(CallError::Trap(_)) => self.counters.traps += 1,
            Err(_) => self.counters.errors += 1,
        }
        if result.as_ref().err().is_none_or(CallError::keeps_instance) {
            self.ready.push(slot);
        }
        result
    }
}
