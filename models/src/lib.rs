//! verdict-models will own the model ABI, the wasmtime engine, per-core instance pools, the
//! precompiled-module cache and the model builders.
//!
//! Nothing is implemented yet: that is the issue "Models in WebAssembly".
