//! The tree-ensemble scorer behind every imported model (`verdict model import`): it walks
//! the trees laid out in a table blob (written by `verdict_models::import`) and reproduces
//! the training library's own prediction arithmetic. `no_std` and dependency-free, so the
//! same file is built twice: into the wasm scorer template (`trees/wasm.rs`, which
//! `verdict model import` completes with a model's tables) and natively into
//! `verdict_models::trees` (tests and the native-vs-wasm benchmark).
//!
//! ## Table layout (little-endian, the blob 8-byte aligned)
//! A header of [`HEADER_WORDS`] u32 words, then sections at the byte offsets it gives:
//! - nodes: [`Node`] (24 bytes) per split, each tree's nodes contiguous in pre-order, so a
//!   child's index is always greater than its parent's (every walk ends);
//! - leaves: f64 per leaf (an XGBoost leaf is an f32, widened exactly);
//! - trees: (root, group) u32 pairs; a root `< 0` is the leaf `!root` (a one-leaf tree);
//! - cats: u32 words; a categorical split's set is a word count followed by its bitset;
//! - base: f64 per output group (XGBoost's base margin; LightGBM's is 0, folded in leaves).
//!
//! ## Arithmetic
//! - XGBoost: a row's values are f32; NaN is missing and takes the node's default child;
//!   a numerical split goes left iff `x < threshold` (f32); a categorical one goes right iff
//!   the category (truncated, 0 <= x < 2^24) is in the set, else left. Each group sums in f32
//!   in tree order from its base margin; outputs follow XGBoost's f32 steps, with an `expf`
//!   that rounds as glibc's does ([`expf`]).
//! - LightGBM: values are widened to f64; |x| <= 1e-35 reads as 0 (as LightGBM's dense
//!   input does); a numerical split's missing type (None: NaN reads as 0; Zero: 0 takes the
//!   default; NaN: NaN takes the default) and then `x <= threshold` (f64); a categorical
//!   split truncates toward zero (-0.5 is category 0), sends NaN and negatives right, and
//!   the category left iff it is in the set. Each group sums in f64 in tree order; `average_output` divides by the iterations.

/// The first word of a table blob, and its layout version.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VTRE");
pub const LAYOUT_VERSION: u32 = 1;
pub const HEADER_WORDS: usize = 32;
pub const HEADER_BYTES: usize = HEADER_WORDS * 4;

/// Header word indices.
pub mod h {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 1;
    /// [`super::KIND_XGBOOST`] or [`super::KIND_LIGHTGBM`].
    pub const KIND: usize = 2;
    /// One of the `OUT_*` transforms.
    pub const OUTPUT: usize = 3;
    pub const COLS: usize = 4;
    pub const TREES: usize = 5;
    pub const GROUPS: usize = 6;
    /// The group whose output is the score.
    pub const CLASS: usize = 7;
    pub const NODES_AT: usize = 8;
    pub const NODES: usize = 9;
    pub const LEAVES_AT: usize = 10;
    pub const LEAVES: usize = 11;
    pub const TREES_AT: usize = 12;
    pub const CATS_AT: usize = 13;
    pub const CATS: usize = 14;
    pub const BASE_AT: usize = 15;
    /// Bit 0: LightGBM's `average_output` (random forest).
    pub const FLAGS: usize = 16;
    /// The blob's length in bytes.
    pub const BYTES: usize = 17;
    /// LightGBM's sigmoid scale (f64 bits, low word then high word).
    pub const SIGMOID_LO: usize = 18;
    pub const SIGMOID_HI: usize = 19;
}

pub const KIND_XGBOOST: u32 = 1;
pub const KIND_LIGHTGBM: u32 = 2;

/// The margin as it is.
pub const OUT_IDENTITY: u32 = 0;
/// 1 / (1 + e^-x), in the library's own precision and steps.
pub const OUT_SIGMOID: u32 = 1;
/// The chosen class's softmax probability.
pub const OUT_SOFTMAX: u32 = 2;
/// e^x (XGBoost's `count:poisson`, `reg:gamma`, `reg:tweedie`).
pub const OUT_EXP: u32 = 3;

pub const FLAG_AVERAGE: u32 = 1;

/// Node `meta` bits: the feature index, then flags.
pub const META_FEATURE: u32 = 0xffff;
pub const META_DEFAULT_LEFT: u32 = 1 << 16;
pub const META_CATEGORICAL: u32 = 1 << 17;
/// LightGBM's missing type, 2 bits: 0 None, 1 Zero, 2 NaN.
pub const META_MISSING_SHIFT: u32 = 18;
pub const MISSING_NONE: u32 = 0;
pub const MISSING_ZERO: u32 = 1;
pub const MISSING_NAN: u32 = 2;

/// Most rows per call and output groups the scorer keeps sums for.
pub const ROWS_MAX: usize = 256;
pub const GROUPS_MAX: usize = 32;

/// Error codes (negative, as ABI v1 wants them).
pub const ERR_SHAPE: i32 = -1;
/// The tables are not a blob this scorer reads (bad magic, version, bounds or an index a
/// walk could follow out of its section).
pub const ERR_TABLES: i32 = -2;

/// One split. `left`/`right` are node indices, or `!leaf` when negative; `cat` indexes the
/// set of a categorical split in the cats section.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Node {
    pub meta: u32,
    pub left: i32,
    pub right: i32,
    pub cat: u32,
    pub threshold: f64,
}

pub const NODE_BYTES: usize = 24;
const _: () = assert!(core::mem::size_of::<Node>() == NODE_BYTES);
#[cfg(not(target_endian = "little"))]
compile_error!("the table blob is little-endian");

/// A checked view of a blob: every section in bounds and aligned.
pub struct Tables<'a> {
    pub kind: u32,
    pub output: u32,
    pub cols: usize,
    pub groups: usize,
    pub class: usize,
    pub flags: u32,
    pub sigmoid: f64,
    pub nodes: &'a [Node],
    pub leaves: &'a [f64],
    pub trees: &'a [[u32; 2]],
    pub cats: &'a [u32],
    pub base: &'a [f64],
}

fn word(blob: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&blob[i * 4..i * 4 + 4]);
    u32::from_le_bytes(w)
}

/// `count` values of `T` at byte offset `at`, if they lie in `blob` and are aligned.
fn section<T>(blob: &[u8], at: u32, count: u32) -> Option<&[T]> {
    let (at, count) = (at as usize, count as usize);
    let bytes = count.checked_mul(core::mem::size_of::<T>())?;
    let end = at.checked_add(bytes)?;
    if end > blob.len() {
        return None;
    }
    let ptr = blob[at..].as_ptr();
    if !(ptr as usize).is_multiple_of(core::mem::align_of::<T>()) {
        return None;
    }
    // SAFETY: in bounds and aligned (checked above); every bit pattern is a valid `T` here
    // (plain integers and floats).
    Some(unsafe { core::slice::from_raw_parts(ptr.cast::<T>(), count) })
}

impl<'a> Tables<'a> {
    /// Checks the header and the sections' bounds (not the trees: walks check as they go).
    pub fn read(blob: &'a [u8]) -> Option<Tables<'a>> {
        if blob.len() < HEADER_BYTES
            || word(blob, h::MAGIC) != MAGIC
            || word(blob, h::VERSION) != LAYOUT_VERSION
        {
            return None;
        }
        let w = |i| word(blob, i);
        let blob = blob.get(..w(h::BYTES) as usize)?;
        let groups = w(h::GROUPS) as usize;
        let class = w(h::CLASS) as usize;
        if groups == 0 || groups > GROUPS_MAX || class >= groups {
            return None;
        }
        let sigmoid =
            f64::from_bits(u64::from(w(h::SIGMOID_LO)) | u64::from(w(h::SIGMOID_HI)) << 32);
        Some(Tables {
            kind: w(h::KIND),
            output: w(h::OUTPUT),
            cols: w(h::COLS) as usize,
            groups,
            class,
            flags: w(h::FLAGS),
            sigmoid,
            nodes: section(blob, w(h::NODES_AT), w(h::NODES))?,
            leaves: section(blob, w(h::LEAVES_AT), w(h::LEAVES))?,
            trees: section(blob, w(h::TREES_AT), w(h::TREES))?,
            cats: section(blob, w(h::CATS_AT), w(h::CATS))?,
            base: section(blob, w(h::BASE_AT), groups as u32)?,
        })
    }

    /// Checks every index a walk can follow, once, so walks need no checks of their own:
    /// each node's feature is a column, each child is a later node or a leaf, each
    /// categorical set lies in the cats section, each tree's root and group exist, and the
    /// kind and output are known. A child after its parent also makes every walk end.
    pub fn check(self) -> Option<Checked<'a>> {
        let known_kind = matches!(self.kind, KIND_XGBOOST | KIND_LIGHTGBM);
        let known_output = self.output <= OUT_EXP;
        if !known_kind || !known_output || self.cols == 0 || self.cols > META_FEATURE as usize {
            return None;
        }
        let leaf_ok = |c: i32| (!c as usize) < self.leaves.len();
        for (i, n) in self.nodes.iter().enumerate() {
            if (n.meta & META_FEATURE) as usize >= self.cols {
                return None;
            }
            for c in [n.left, n.right] {
                let ok = if c < 0 {
                    leaf_ok(c)
                } else {
                    c as usize > i && (c as usize) < self.nodes.len()
                };
                if !ok {
                    return None;
                }
            }
            if n.meta & META_CATEGORICAL != 0 {
                let at = n.cat as usize;
                let words = *self.cats.get(at)? as usize;
                // `at < len` (the `get` above), so `len - at - 1` cannot wrap; no sum can.
                if words > self.cats.len() - at - 1 {
                    return None;
                }
            }
        }
        for &[root, group] in self.trees {
            let root = root as i32;
            let ok = if root < 0 {
                leaf_ok(root)
            } else {
                (root as usize) < self.nodes.len()
            };
            if !ok || group as usize >= self.groups {
                return None;
            }
        }
        Some(Checked(self))
    }
}

/// Tables whose every index was checked ([`Tables::check`]): what the walks read.
pub struct Checked<'a>(Tables<'a>);

impl<'a> Checked<'a> {
    pub fn tables(&self) -> &Tables<'a> {
        &self.0
    }

    /// Whether `category` is in the set at `at` (a word count, then the bitset).
    #[inline]
    fn in_set(&self, at: u32, category: u32) -> bool {
        let cats = self.0.cats;
        let at = at as usize;
        // SAFETY: `check` proved `at` and the `cats[at]` words after it lie in `cats`.
        unsafe {
            let words = *cats.get_unchecked(at) as usize;
            let i = (category / 32) as usize;
            i < words && *cats.get_unchecked(at + 1 + i) >> (category % 32) & 1 == 1
        }
    }

    /// The leaf value `x` (one row, `cols` values) reaches from `root`, XGBoost's way.
    #[inline]
    fn walk_xgboost(&self, root: i32, x: &[f32]) -> f64 {
        let nodes = self.0.nodes;
        let mut i = root;
        while i >= 0 {
            // SAFETY: `check` proved every reachable index is a node and every feature a
            // column; the caller passes rows of `cols` values.
            let n = unsafe { nodes.get_unchecked(i as usize) };
            let v = unsafe { *x.get_unchecked((n.meta & META_FEATURE) as usize) };
            let left = if n.meta & META_CATEGORICAL == 0 {
                // A NaN compares false: it goes left only when that is its default.
                (f64::from(v) < n.threshold) | (v.is_nan() & (n.meta & META_DEFAULT_LEFT != 0))
            } else if v.is_nan() {
                n.meta & META_DEFAULT_LEFT != 0
            } else {
                // XGBoost's `Decision`: invalid categories (negative, >= 2^24) go left; a
                // category in the set goes right.
                !(0.0..16_777_216.0).contains(&v) || !self.in_set(n.cat, v as u32)
            };
            i = if left { n.left } else { n.right };
        }
        // SAFETY: `check` proved every leaf reference is a leaf.
        unsafe { *self.0.leaves.get_unchecked(!i as usize) }
    }

    /// The leaf value `x` reaches from `root`, LightGBM's way.
    #[inline]
    fn walk_lightgbm(&self, root: i32, x: &[f32]) -> f64 {
        const ZERO: f64 = 1e-35f32 as f64;
        let nodes = self.0.nodes;
        let mut i = root;
        while i >= 0 {
            // SAFETY: as in `walk_xgboost`.
            let n = unsafe { nodes.get_unchecked(i as usize) };
            let mut v = f64::from(unsafe { *x.get_unchecked((n.meta & META_FEATURE) as usize) });
            if v.abs() <= ZERO {
                v = 0.0;
            }
            let left = if n.meta & META_CATEGORICAL != 0 {
                // NaN and negatives (after truncation: -0.5 is category 0) go right;
                // categories beyond i32 read as negative.
                !(v.is_nan() || v <= -1.0 || v >= 2_147_483_648.0) && self.in_set(n.cat, v as u32)
            } else {
                let missing = n.meta >> META_MISSING_SHIFT & 3;
                if v.is_nan() && missing != MISSING_NAN {
                    v = 0.0;
                }
                if (missing == MISSING_ZERO && v == 0.0) || (missing == MISSING_NAN && v.is_nan()) {
                    n.meta & META_DEFAULT_LEFT != 0
                } else {
                    v <= n.threshold
                }
            };
            i = if left { n.left } else { n.right };
        }
        // SAFETY: as in `walk_xgboost`.
        unsafe { *self.0.leaves.get_unchecked(!i as usize) }
    }

    /// Scores `rows` rows of `cols` f32 features (row-major) into `out`, one score per row:
    /// what the library's `predict` returns for the chosen class. Returns 0 or an error code.
    pub fn score(
        &self,
        sums: &mut Sums,
        rows: usize,
        cols: usize,
        input: &[f32],
        out: &mut [f64],
    ) -> i32 {
        let t = &self.0;
        if rows > ROWS_MAX || cols != t.cols || input.len() < rows * cols || out.len() < rows {
            return ERR_SHAPE;
        }
        let g = t.groups;
        let input = &input[..rows * cols];
        if t.kind == KIND_XGBOOST {
            let acc = &mut sums.f32s[..rows * g];
            for r in 0..rows {
                acc[r * g..r * g + g]
                    .iter_mut()
                    .zip(t.base)
                    .for_each(|(a, b)| *a = *b as f32);
            }
            // Tree-major, so a tree's nodes stay in cache across the rows; each row's sum
            // still adds its trees in order, as XGBoost does.
            for &[root, group] in t.trees {
                let group = group as usize;
                for (r, x) in input.chunks_exact(cols).enumerate() {
                    acc[r * g + group] += self.walk_xgboost(root as i32, x) as f32;
                }
            }
            for (r, o) in out[..rows].iter_mut().enumerate() {
                *o = f64::from(output_xgboost(t, &acc[r * g..r * g + g]));
            }
        } else {
            let acc = &mut sums.f64s[..rows * g];
            acc.fill(0.0);
            for &[root, group] in t.trees {
                let group = group as usize;
                for (r, x) in input.chunks_exact(cols).enumerate() {
                    acc[r * g + group] += self.walk_lightgbm(root as i32, x);
                }
            }
            for (r, o) in out[..rows].iter_mut().enumerate() {
                *o = output_lightgbm(t, &acc[r * g..r * g + g]);
            }
        }
        0
    }
}

/// Scratch sums for one call: rows x groups, in the library's precision.
pub struct Sums {
    f32s: [f32; ROWS_MAX * GROUPS_MAX],
    f64s: [f64; ROWS_MAX * GROUPS_MAX],
}

impl Sums {
    pub const fn new() -> Sums {
        Sums {
            f32s: [0.0; ROWS_MAX * GROUPS_MAX],
            f64s: [0.0; ROWS_MAX * GROUPS_MAX],
        }
    }
}

impl Default for Sums {
    fn default() -> Sums {
        Sums::new()
    }
}

/// [`Tables::read`], [`Tables::check`] and [`Checked::score`] in one call (the checks are
/// O(nodes): a caller scoring many batches checks once and keeps the [`Checked`]).
pub fn score(
    blob: &[u8],
    sums: &mut Sums,
    rows: usize,
    cols: usize,
    input: &[f32],
    out: &mut [f64],
) -> i32 {
    match Tables::read(blob).and_then(Tables::check) {
        Some(t) => t.score(sums, rows, cols, input, out),
        None => ERR_TABLES,
    }
}

/// XGBoost's `PredTransform`, in f32 as it does it.
fn output_xgboost(t: &Tables, margins: &[f32]) -> f32 {
    let x = margins[t.class];
    match t.output {
        // common::Sigmoid: 1 / (expf(min(-x, 88.7)) + 1 + 1e-16), each step in f32.
        OUT_SIGMOID => {
            let m = -x;
            // std::min(a, b) is `b < a ? b : a`: a NaN `-x` stays NaN.
            let m = if 88.7f32 < m { 88.7f32 } else { m };
            1.0f32 / (expf(m) + 1.0f32 + 1e-16f32)
        }
        // common::Softmax: max by fmaxf, expf(x - max) in f32, the sum in f64, one division
        // by that sum rounded to f32.
        OUT_SOFTMAX => {
            let mut wmax = margins[0];
            for &m in &margins[1..] {
                wmax = fmaxf(m, wmax);
            }
            let mut wsum = 0.0f64;
            let mut chosen = 0.0f32;
            for (k, &m) in margins.iter().enumerate() {
                let e = expf(m - wmax);
                wsum += f64::from(e);
                if k == t.class {
                    chosen = e;
                }
            }
            chosen / wsum as f32
        }
        OUT_EXP => expf(x),
        _ => x,
    }
}

/// LightGBM's `ConvertOutput`, in f64.
fn output_lightgbm(t: &Tables, raw: &[f64]) -> f64 {
    let average = if t.flags & FLAG_AVERAGE != 0 {
        let iterations = (t.trees.len() / t.groups).max(1) as f64;
        Some(iterations)
    } else {
        None
    };
    let at = |k: usize| match average {
        Some(n) => raw[k] / n,
        None => raw[k],
    };
    match t.output {
        OUT_SIGMOID => 1.0 / (1.0 + exp(-t.sigmoid * at(t.class))),
        OUT_SOFTMAX => {
            let mut wmax = at(0);
            for k in 1..raw.len() {
                let v = at(k);
                wmax = if v > wmax { v } else { wmax };
            }
            let mut wsum = 0.0;
            for k in 0..raw.len() {
                wsum += exp(at(k) - wmax);
            }
            exp(at(t.class) - wmax) / wsum
        }
        OUT_EXP => exp(at(t.class)),
        _ => at(t.class),
    }
}

/// C's `fmaxf`: the other operand when one is NaN.
fn fmaxf(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        b
    } else if b.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// `2^(i/32)` rounded to the nearest f64, as bits, minus `i << 47` (so adding `k << 47` for
/// `k = 32q + i` gives `2^(k/32)`): computed to 60 digits with Python's `decimal`.
const EXP2_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `32 / ln 2` (0x1.71547652b82fep+0 · 32), split so each half times an f32 is exact in f64.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
const INV_LN2_N_HI: f64 = f64::from_bits(INV_LN2_N.to_bits() & 0xffff_ffff_f800_0000);
const INV_LN2_N_LO: f64 = INV_LN2_N - INV_LN2_N_HI;
/// The cubic for `2^(r/32)`, r in [-1/2, 1/2], pre-scaled by powers of 32: the coefficients
/// 0x1.c6af84b912394p-5, 0x1.ebfce50fac4f3p-3 and 0x1.62e42ff0c52d6p-1 of ARM's
/// optimized-routines `expf` (MIT OR Apache-2.0 WITH LLVM-exception), which glibc ships
/// since 2.27.
const EXPF_POLY: [f64; 3] = [
    f64::from_bits(0x3ebc6af84b912394),
    f64::from_bits(0x3f2ebfce50fac4f3),
    f64::from_bits(0x3f962e42ff0c52d6),
];
const SHIFT: f64 = 6755399441055744.0; // 1.5 * 2^52

/// `e^x` for f32, rounded exactly as glibc's `expf` (x86-64, FMA build) rounds it, so the
/// f32 steps of XGBoost's sigmoid and softmax come out bit for bit. glibc's `expf` is not
/// correctly rounded (0.502 ULP): matching it means the same algorithm. `2^(k/32)` from a
/// table times a cubic in f64, with `r = x·32/ln2 - k` computed as one fused multiply-add
/// would (the product split in two exact halves, then one rounding).
pub fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    let abstop = (bits >> 20) & 0x7ff;
    if abstop >= (88.0f32.to_bits() >> 20) {
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= (f32::INFINITY.to_bits() >> 20) {
            return x + x;
        }
        // log(2^128) and log(2^-150), rounded to f32.
        if x > f32::from_bits(0x42b17217) {
            return f32::INFINITY;
        }
        if x < f32::from_bits(0xc2cff1b4) {
            return 0.0;
        }
    }
    let xd = f64::from(x);
    let z = INV_LN2_N * xd;
    let kd = z + SHIFT;
    let ki = kd.to_bits();
    let kd = kd - SHIFT;
    // fma(INV_LN2_N, xd, -kd): hi·xd is exact and within an ulp-multiple of kd, so its
    // difference with kd is exact too; adding lo·xd (exact) rounds once.
    let r = (INV_LN2_N_HI * xd - kd) + INV_LN2_N_LO * xd;
    let t = EXP2_TABLE[(ki % 32) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let p = EXPF_POLY[0] * r + EXPF_POLY[1];
    let r2 = r * r;
    let y = EXPF_POLY[2] * r + 1.0;
    let y = p * r2 + y;
    (y * s) as f32
}

/// ln 2 in two parts: the high part has trailing zero bits, so `k * LN2_HI` is exact.
const LN2_HI: f64 = f64::from_bits(0x3fe62e42fee00000);
const LN2_LO: f64 = f64::from_bits(0x3dea39ef35793c76);
const LOG2E: f64 = core::f64::consts::LOG2_E;

/// `e^x` in f64 within a few ULP (Cody-Waite reduction, a degree-13 Taylor polynomial):
/// LightGBM's outputs, which are compared within 1e-12 relative.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.782712893384 {
        return f64::INFINITY;
    }
    if x < -745.2 {
        return 0.0;
    }
    let k = (x * LOG2E + SHIFT) - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = INV_FACTORIAL[13];
    for c in INV_FACTORIAL[..13].iter().rev() {
        p = p * r + c;
    }
    scale2(p, k as i32)
}

/// `1/n!` for n in 0..=13: the Taylor coefficients of `e^r`, |r| <= ln2/2 (the degree-14
/// term is under 1e-17 relative).
const INV_FACTORIAL: [f64; 14] = {
    let mut c = [1.0; 14];
    let mut n = 1;
    while n < 14 {
        c[n] = c[n - 1] / n as f64;
        n += 1;
    }
    c
};

/// `y · 2^k` for y in [0.7, 1.5] and k from -1076 to 1024.
fn scale2(y: f64, k: i32) -> f64 {
    let pow = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    if k > 1023 {
        y * pow(1023) * pow(k - 1023)
    } else if k < -1022 {
        y * pow(-1022) * pow((k + 1022).max(-1022))
    } else {
        y * pow(k)
    }
}
