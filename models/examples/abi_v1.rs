//! The wasm side of verdict's model ABI v1, shared by the example models (see
//! `models/README.md`). A model file declares `mod score` with
//! `pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32` and includes
//! this module; this file owns the exports, the buffers and the panic handler.
//!
//! Buffers are static: the module imports nothing and allocates nothing.

use core::ptr::{addr_of, addr_of_mut};

/// Most rows one call scores, and most features per row.
pub const ROWS_MAX: usize = 256;
pub const COLS_MAX: usize = 64;

/// Error codes `verdict_score` returns (negative).
pub const ERR_SHAPE: i32 = -1;

static mut INPUT: [f32; ROWS_MAX * COLS_MAX] = [0.0; ROWS_MAX * COLS_MAX];
static mut OUTPUT: [f64; ROWS_MAX] = [0.0; ROWS_MAX];

fn shape(rows: i32, cols: i32) -> Option<(usize, usize)> {
    let (rows, cols) = (usize::try_from(rows).ok()?, usize::try_from(cols).ok()?);
    (rows <= ROWS_MAX && cols <= COLS_MAX && rows * cols <= ROWS_MAX * COLS_MAX)
        .then_some((rows, cols))
}

#[unsafe(no_mangle)]
pub extern "C" fn verdict_abi() -> i32 {
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn verdict_input(rows: i32, cols: i32) -> i32 {
    match shape(rows, cols) {
        Some(_) => addr_of!(INPUT) as i32,
        None => ERR_SHAPE,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn verdict_score(rows: i32, cols: i32) -> i32 {
    let Some((rows, cols)) = shape(rows, cols) else {
        return ERR_SHAPE;
    };
    // SAFETY: single-threaded wasm; the host writes INPUT only between calls.
    let (input, output) = unsafe { (&*addr_of!(INPUT), &mut *addr_of_mut!(OUTPUT)) };
    let code = crate::score::score(rows, cols, &input[..rows * cols], &mut output[..rows]);
    if code < 0 {
        return code;
    }
    addr_of!(OUTPUT) as i32
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
