//! The gradient-boosted tree example model, built for wasm32 (ABI v1).
#![no_std]

#[allow(dead_code)]
#[path = "../math.rs"]
mod math;

// The plain walk the tests compare the QuickScorer tables with is not called here.
#[allow(dead_code)]
#[path = "score.rs"]
mod score;

#[path = "../abi_v1.rs"]
mod abi;
