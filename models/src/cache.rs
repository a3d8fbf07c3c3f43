//! The precompiled-module cache: a module is compiled once per (module bytes, engine
//! configuration) and kept on disk as `<sha256>-<engine>.cwasm`; loading it again is a memory
//! map (`Module::deserialize_file`), not a compile. The directory is created private (0700):
//! an artifact is native code, so only artifacts this engine wrote are ever loaded.

use std::hash::Hasher;
use std::io::Write;
use std::path::Path;

use log::warn;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a `Hash` value into SHA-256, so the engine's compatibility hash is stable on disk.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Identifies the engine configuration and wasmtime version artifacts are tied to.
fn engine_key(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex(&h.0.finalize()[..8])
}

/// The compiled module for `wasm` (whose hash is `sha256`), and whether it came from the
/// cache. Without a cache directory, or when the cache cannot be written, it compiles in
/// memory. A cached artifact that fails to load is replaced.
pub fn module(
    engine: &Engine,
    dir: Option<&Path>,
    sha256: &str,
    wasm: &[u8],
) -> Result<(Module, bool), String> {
    let Some(dir) = dir else {
        return Module::new(engine, wasm)
            .map(|m| (m, false))
            .map_err(|e| format!("{e:#}"));
    };
    let path = dir.join(format!("{sha256}-{}.cwasm", engine_key(engine)));
    if path.is_file() {
        // SAFETY: artifacts in this directory are written only by `store` below, by an engine
        // with the same configuration (the file name says which).
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(m) => return Ok((m, true)),
            Err(e) => {
                warn!(
                    "model cache: {} does not load ({e:#}); compiling again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let artifact = engine
        .precompile_module(wasm)
        .map_err(|e| format!("{e:#}"))?;
    match store(dir, &path, &artifact) {
        // SAFETY: just written by this engine.
        Ok(()) => match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(m) => Ok((m, false)),
            Err(e) => Err(format!("loading the artifact just compiled: {e:#}")),
        },
        Err(e) => {
            warn!(
                "model cache: cannot write {} ({e}); keeping the module in memory",
                path.display()
            );
            // SAFETY: produced by `precompile_module` of this engine a moment ago.
            unsafe { Module::deserialize(engine, &artifact) }
                .map(|m| (m, false))
                .map_err(|e| format!("{e:#}"))
        }
    }
}

/// Writes atomically: a reader never maps a half-written artifact.
fn store(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(artifact)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
