//! The scorer template of imported models, built for wasm32 (ABI v1) by
//! `scripts/build-models.sh` and embedded in verdict. It carries no model: `verdict model
//! import` appends a data segment with the model's tables at `__heap_base` (the first byte
//! past this module's own data; the scorer allocates nothing) and raises the memory's
//! minimum to hold it.
#![no_std]

// The template uses the scorer alone; the constants it defines are the importer's too.
#[allow(dead_code)]
#[path = "scorer.rs"]
mod scorer;

mod score {
    use core::ptr::addr_of_mut;

    use super::scorer;

    unsafe extern "C" {
        /// Defined by the linker: the end of the module's static data.
        static __heap_base: u8;
    }

    static mut SUMS: scorer::Sums = scorer::Sums::new();
    /// The tables, checked by this instance's first call (an instance is reused across calls
    /// and nothing writes the tables, so one check serves every call).
    static mut CHECKED: Option<scorer::Checked<'static>> = None;

    /// The table blob: its header gives its length.
    fn tables() -> &'static [u8] {
        let at = (&raw const __heap_base as usize).next_multiple_of(8);
        // SAFETY: the importer wrote the blob at this address (the header's length word is
        // checked before any section is read); memory past the end traps, never corrupts.
        unsafe {
            let header = core::slice::from_raw_parts(at as *const u8, scorer::HEADER_BYTES);
            let mut len = [0u8; 4];
            len.copy_from_slice(&header[scorer::h::BYTES * 4..scorer::h::BYTES * 4 + 4]);
            // At most the memory past `at`: a bad length must not make a slice beyond it.
            let memory = core::arch::wasm32::memory_size(0) * 65536;
            let len = (u32::from_le_bytes(len) as usize)
                .max(scorer::HEADER_BYTES)
                .min(memory.saturating_sub(at));
            core::slice::from_raw_parts(at as *const u8, len)
        }
    }

    pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
        // SAFETY: single-threaded wasm; SUMS is scratch for this call alone, CHECKED is
        // written once, before any read.
        let (sums, checked) = unsafe { (&mut *addr_of_mut!(SUMS), &mut *addr_of_mut!(CHECKED)) };
        if checked.is_none() {
            *checked = scorer::Tables::read(tables()).and_then(scorer::Tables::check);
        }
        match checked {
            Some(t) => t.score(sums, rows, cols, input, out),
            None => scorer::ERR_TABLES,
        }
    }
}

#[path = "../examples/abi_v1.rs"]
mod abi;
