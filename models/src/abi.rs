//! ABI v1, checked when a model loads (see `models/README.md` for the contract):
//! the module imports nothing and exports `memory`, `verdict_abi() -> i32` (returns 1),
//! `verdict_input(rows: i32, cols: i32) -> i32` and `verdict_score(rows: i32, cols: i32) -> i32`.
//!
//! Beyond the types, a probe instance is made and asked for the ABI version, for an input
//! region of the largest batch (which must lie inside its memory) and to score one row of
//! zeros, so a broken model fails at load with its reason rather than on the first event.

use wasmtime::{ExternType, InstancePre, Linker, Module, ValType};

use crate::pool::{Slot, StoreState};
use crate::{Manifest, Runtime};

pub const ABI_VERSION: i32 = 1;

/// The load-time probe's deadline, microseconds.
const PROBE_DEADLINE_US: u64 = 1_000_000;

const FUNCTIONS: [(&str, usize); 3] = [
    ("verdict_abi", 0),
    ("verdict_input", 2),
    ("verdict_score", 2),
];

fn kind(t: &ExternType) -> &'static str {
    match t {
        ExternType::Func(_) => "a function",
        ExternType::Global(_) => "a global",
        ExternType::Table(_) => "a table",
        ExternType::Memory(_) => "a memory",
        ExternType::Tag(_) => "a tag",
    }
}

/// The module's `InstancePre`, or every way it breaks the ABI.
pub fn check(
    runtime: &Runtime,
    module: &Module,
    manifest: &Manifest,
) -> Result<InstancePre<StoreState>, Vec<String>> {
    let mut problems = Vec::new();
    for import in module.imports() {
        problems.push(format!(
            "it imports `{}.{}` ({}); a model imports nothing",
            import.module(),
            import.name(),
            kind(&import.ty())
        ));
    }
    match module.get_export("memory") {
        None => problems.push("no `memory` export".into()),
        Some(ExternType::Memory(m)) if m.is_64() => {
            problems.push("`memory` is a 64-bit memory; ABI v1 uses a 32-bit memory".into())
        }
        Some(ExternType::Memory(m)) if m.is_shared() => {
            problems.push("`memory` is shared; ABI v1 uses an unshared memory".into())
        }
        Some(ExternType::Memory(_)) => {}
        Some(other) => problems.push(format!("`memory` is {}, not a memory", kind(&other))),
    }
    for (name, params) in FUNCTIONS {
        let want = if params == 0 {
            "() -> i32".to_string()
        } else {
            "(i32, i32) -> i32".to_string()
        };
        match module.get_export(name) {
            None => problems.push(format!("no `{name}` export (want {name}{want})")),
            Some(ExternType::Func(f)) => {
                let ok = f.params().len() == params
                    && f.params().all(|p| matches!(p, ValType::I32))
                    && f.results().len() == 1
                    && f.results().all(|r| matches!(r, ValType::I32));
                if !ok {
                    let list = |v: Vec<String>| v.join(", ");
                    let params: Vec<String> = f.params().map(|p| p.to_string()).collect();
                    let results: Vec<String> = f.results().map(|r| r.to_string()).collect();
                    problems.push(format!(
                        "`{name}` has type ({}) -> ({}); want {want}",
                        list(params),
                        list(results)
                    ));
                }
            }
            Some(other) => problems.push(format!("`{name}` is {}, not a function", kind(&other))),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let pre = Linker::new(module.engine())
        .instantiate_pre(module)
        .map_err(|e| vec![format!("cannot prepare instances: {e:#}")])?;
    probe(runtime, &pre, manifest).map_err(|p| vec![p])?;
    Ok(pre)
}

fn probe(
    runtime: &Runtime,
    pre: &InstancePre<StoreState>,
    manifest: &Manifest,
) -> Result<(), String> {
    let config = runtime.config();
    // The probe runs under a generous deadline of its own, not the model's: deadlines are
    // wall-clock time, and a loaded machine (a build, a neighbour) must not fail a load.
    let deadline_us = manifest.deadline_us.max(PROBE_DEADLINE_US);
    let ticks = config.deadline_ticks(deadline_us);
    let mut slot = Slot::new(pre, config.memory_bytes_max)?;
    let version = slot
        .abi_version(ticks)
        .map_err(|e| format!("verdict_abi() failed: {e}"))?;
    if version != ABI_VERSION {
        return Err(format!(
            "verdict_abi() returned {version}; this engine speaks ABI {ABI_VERSION}"
        ));
    }
    let (rows, cols) = (config.rows_per_call_max as usize, manifest.features.len());
    slot.input_region(rows, cols, ticks).map_err(|e| match e {
        crate::CallError::Code(code) => format!(
            "verdict_input({rows}, {cols}) refused the largest batch (code {code}): a model \
             must accept up to {rows} rows (models.rows_per_call_max) of its {cols} features"
        ),
        other => format!("verdict_input({rows}, {cols}): {other}"),
    })?;
    let zeros = vec![0f32; cols];
    let mut out = [0f64; 1];
    match slot.score(1, cols, &zeros, &mut out, ticks) {
        Ok(()) | Err(crate::CallError::Code(_) | crate::CallError::NotFinite { .. }) => Ok(()),
        Err(e) => Err(format!(
            "scoring one row of zero features (the load-time probe): {e}"
        )),
    }
}
