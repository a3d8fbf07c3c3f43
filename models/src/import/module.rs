//! The imported module: the scorer template built with verdict (`models/trees/wasm.rs`),
//! with the model's table blob as one more data segment at the template's `__heap_base`, its
//! memory's minimum raised to hold it, and a `verdict.model` custom section of provenance.
//! Every other section is copied byte for byte.

use std::borrow::Cow;

use wasm_encoder::{
    ConstExpr, CustomSection, DataCountSection, DataSection, MemorySection, MemoryType, RawSection,
};
use wasmparser::{DataKind, ExternalKind, Operator, Parser, Payload};

use super::{ImportError, Provenance};

/// The scorer template, built for wasm32 by models/build.rs.
pub static TEMPLATE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trees.wasm"));

/// The custom section that says where a module came from.
pub const PROVENANCE_SECTION: &str = "verdict.model";

const PAGE_BYTES: u64 = 65536;

/// What the template's layout gives: where the blob goes.
fn heap_base(template: &[u8]) -> Result<u32, String> {
    let mut export = None;
    let mut globals = Vec::new();
    for payload in Parser::new(0).parse_all(template) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| e.to_string())?;
                    if e.name == "__heap_base" && e.kind == ExternalKind::Global {
                        export = Some(e.index);
                    }
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    let g = g.map_err(|e| e.to_string())?;
                    let mut ops = g.init_expr.get_operators_reader();
                    globals.push(match ops.read().map_err(|e| e.to_string())? {
                        Operator::I32Const { value } => Some(value as u32),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
    }
    let index = export.ok_or("the scorer template exports no __heap_base")?;
    globals
        .get(index as usize)
        .copied()
        .flatten()
        .ok_or_else(|| "the scorer template's __heap_base is not a constant".into())
}

fn broken(message: String) -> ImportError {
    ImportError::Limit(format!("building the module: {message}"))
}

/// The template with `blob` and `provenance` in it.
pub fn assemble(blob: &[u8], provenance: &Provenance) -> Result<Vec<u8>, ImportError> {
    let base = heap_base(TEMPLATE).map_err(broken)?.next_multiple_of(8);
    let end = u64::from(base) + blob.len() as u64;
    let pages = end.div_ceil(PAGE_BYTES);
    let limit = crate::manifest::WASM_BYTES_MAX;
    if end > limit {
        return Err(ImportError::Limit(format!(
            "the model's tables are {} bytes; a module's limit is {limit}",
            blob.len()
        )));
    }
    let mut module = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(TEMPLATE) {
        let payload = payload.map_err(|e| broken(e.to_string()))?;
        match &payload {
            Payload::MemorySection(r) => {
                let mut memories = MemorySection::new();
                for m in r.clone() {
                    let m = m.map_err(|e| broken(e.to_string()))?;
                    memories.memory(MemoryType {
                        minimum: m.initial.max(pages),
                        maximum: m.maximum.map(|max| max.max(pages)),
                        memory64: m.memory64,
                        shared: m.shared,
                        page_size_log2: m.page_size_log2,
                    });
                }
                module.section(&memories);
            }
            Payload::DataCountSection { count, .. } => {
                module.section(&DataCountSection { count: count + 1 });
            }
            Payload::DataSection(r) => {
                let mut data = DataSection::new();
                for segment in r.clone() {
                    let segment = segment.map_err(|e| broken(e.to_string()))?;
                    data.raw(&TEMPLATE[segment.range.clone()]);
                }
                data.active(0, &ConstExpr::i32_const(base as i32), blob.iter().copied());
                module.section(&data);
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: &TEMPLATE[range],
                    });
                }
            }
        }
    }
    let text = serde_json::to_string(provenance).map_err(|e| broken(e.to_string()))?;
    module.section(&CustomSection {
        name: Cow::Borrowed(PROVENANCE_SECTION),
        data: Cow::Borrowed(text.as_bytes()),
    });
    Ok(module.finish())
}

/// An imported module's blob and provenance, read back (`verdict model inspect`).
pub fn extract(wasm: &[u8]) -> Result<(Vec<u8>, Provenance), String> {
    let mut blob = None;
    let mut provenance = None;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| format!("not a wasm module: {e}"))? {
            Payload::DataSection(r) => {
                for segment in r {
                    let segment = segment.map_err(|e| e.to_string())?;
                    if matches!(segment.kind, DataKind::Active { .. })
                        && segment.data.starts_with(&crate::trees::MAGIC.to_le_bytes())
                    {
                        blob = Some(segment.data.to_vec());
                    }
                }
            }
            Payload::CustomSection(c) if c.name() == PROVENANCE_SECTION => {
                let p: Provenance = serde_json::from_slice(c.data())
                    .map_err(|e| format!("its {PROVENANCE_SECTION} section: {e}"))?;
                provenance = Some(p);
            }
            _ => {}
        }
    }
    match (blob, provenance) {
        (Some(b), Some(p)) => Ok((b, p)),
        _ => Err("not a module `verdict model import` wrote (no tree tables in it)".into()),
    }
}
