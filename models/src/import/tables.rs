//! A [`Forest`] laid out as the scorer's table blob (layout in `models/trees/scorer.rs`),
//! and a blob read back into what `verdict model inspect` prints.

use super::{CATEGORY_WORDS_MAX, Forest, Format, ImportError, Node, Test};
use crate::trees::{self, HEADER_BYTES, HEADER_WORDS, Tables, h};

/// The blob for `forest`: each tree's reachable nodes in pre-order (a child always after
/// its parent), leaves apart, categorical sets as bitsets.
pub fn encode(forest: &Forest) -> Result<Vec<u8>, ImportError> {
    let mut nodes: Vec<trees::Node> = Vec::new();
    let mut leaves: Vec<f64> = Vec::new();
    let mut roots: Vec<[u32; 2]> = Vec::new();
    let mut cats: Vec<u32> = Vec::new();
    for (t, tree) in forest.trees.iter().enumerate() {
        let mut seen = vec![false; tree.nodes.len()];
        // (source node, the new parent and which side of it), root first.
        let mut stack: Vec<(usize, Option<(usize, bool)>)> = vec![(0, None)];
        let mut root = 0i32;
        while let Some((src, parent)) = stack.pop() {
            if std::mem::replace(&mut seen[src], true) {
                return Err(ImportError::Parse {
                    format: forest.format.name(),
                    message: format!("tree {t}: node {src} is reached twice (not a tree)"),
                });
            }
            let reference = match &tree.nodes[src] {
                Node::Leaf(v) => {
                    leaves.push(*v);
                    !((leaves.len() - 1) as i32)
                }
                Node::Split {
                    feature,
                    test,
                    default_left,
                    missing,
                    left,
                    right,
                } => {
                    let mut meta = *feature as u32 | missing << trees::META_MISSING_SHIFT;
                    if *default_left {
                        meta |= trees::META_DEFAULT_LEFT;
                    }
                    let (threshold, cat) = match test {
                        Test::Numerical { threshold } => (*threshold, 0),
                        Test::Categorical { set } => {
                            meta |= trees::META_CATEGORICAL;
                            let at = cats.len() as u32;
                            let words = set.iter().max().map_or(0, |&m| m as usize / 32 + 1);
                            cats.push(words as u32);
                            let from = cats.len();
                            cats.resize(from + words, 0);
                            for &c in set {
                                cats[from + c as usize / 32] |= 1 << (c % 32);
                            }
                            if cats.len() > CATEGORY_WORDS_MAX {
                                return Err(ImportError::Limit(format!(
                                    "the categorical splits need {} words of bitsets; the limit is {CATEGORY_WORDS_MAX}",
                                    cats.len()
                                )));
                            }
                            (0.0, at)
                        }
                    };
                    nodes.push(trees::Node {
                        meta,
                        left: 0,
                        right: 0,
                        cat,
                        threshold,
                    });
                    let me = nodes.len() - 1;
                    stack.push((*right, Some((me, false))));
                    stack.push((*left, Some((me, true))));
                    me as i32
                }
            };
            match parent {
                None => root = reference,
                Some((p, true)) => nodes[p].left = reference,
                Some((p, false)) => nodes[p].right = reference,
            }
        }
        roots.push([root as u32, tree.group as u32]);
    }
    if nodes.len() > i32::MAX as usize || leaves.len() > i32::MAX as usize {
        return Err(ImportError::Limit("too many nodes".into()));
    }
    // Sections 8-byte aligned, in the order the header lists them.
    let mut blob = vec![0u8; HEADER_BYTES];
    let mut header = [0u32; HEADER_WORDS];
    let section = |blob: &mut Vec<u8>, bytes: &[u8]| -> u32 {
        blob.resize(blob.len().next_multiple_of(8), 0);
        let at = blob.len() as u32;
        blob.extend_from_slice(bytes);
        at
    };
    let node_bytes: Vec<u8> = nodes
        .iter()
        .flat_map(|n| {
            let mut b = [0u8; trees::NODE_BYTES];
            b[0..4].copy_from_slice(&n.meta.to_le_bytes());
            b[4..8].copy_from_slice(&n.left.to_le_bytes());
            b[8..12].copy_from_slice(&n.right.to_le_bytes());
            b[12..16].copy_from_slice(&n.cat.to_le_bytes());
            b[16..24].copy_from_slice(&n.threshold.to_le_bytes());
            b
        })
        .collect();
    header[h::NODES_AT] = section(&mut blob, &node_bytes);
    header[h::NODES] = nodes.len() as u32;
    let leaf_bytes: Vec<u8> = leaves.iter().flat_map(|v| v.to_le_bytes()).collect();
    header[h::LEAVES_AT] = section(&mut blob, &leaf_bytes);
    header[h::LEAVES] = leaves.len() as u32;
    let root_bytes: Vec<u8> = roots
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    header[h::TREES_AT] = section(&mut blob, &root_bytes);
    header[h::TREES] = roots.len() as u32;
    let cat_bytes: Vec<u8> = cats.iter().flat_map(|v| v.to_le_bytes()).collect();
    header[h::CATS_AT] = section(&mut blob, &cat_bytes);
    header[h::CATS] = cats.len() as u32;
    let base_bytes: Vec<u8> = forest.base.iter().flat_map(|v| v.to_le_bytes()).collect();
    header[h::BASE_AT] = section(&mut blob, &base_bytes);
    blob.resize(blob.len().next_multiple_of(8), 0);
    header[h::MAGIC] = trees::MAGIC;
    header[h::VERSION] = trees::LAYOUT_VERSION;
    header[h::KIND] = match forest.format {
        Format::Xgboost => trees::KIND_XGBOOST,
        Format::Lightgbm => trees::KIND_LIGHTGBM,
    };
    header[h::OUTPUT] = forest.output;
    header[h::COLS] = forest.features as u32;
    header[h::GROUPS] = forest.groups as u32;
    header[h::CLASS] = forest.class as u32;
    header[h::FLAGS] = if forest.average {
        trees::FLAG_AVERAGE
    } else {
        0
    };
    header[h::BYTES] = u32::try_from(blob.len())
        .map_err(|_| ImportError::Limit("the tables are over 4 GiB".into()))?;
    let sigmoid = forest.sigmoid.to_bits();
    header[h::SIGMOID_LO] = sigmoid as u32;
    header[h::SIGMOID_HI] = (sigmoid >> 32) as u32;
    for (i, w) in header.iter().enumerate() {
        blob[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    Ok(blob)
}

/// The shape of a blob's ensemble, as `verdict model inspect` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub trees: usize,
    pub groups: usize,
    pub class: usize,
    pub cols: usize,
    pub splits: usize,
    pub leaves: usize,
    pub depth_max: usize,
    pub depth_mean: f64,
    /// Per feature: numerical splits, categorical splits.
    pub splits_by_feature: Vec<(usize, usize)>,
    pub output: u32,
    pub average: bool,
    pub base: Vec<f64>,
}

/// Reads a blob back: every tree walked from its root.
pub fn shape(blob: &[u8]) -> Result<Shape, String> {
    // The blob may sit unaligned in a module's bytes: read an aligned copy.
    let aligned = Aligned::new(blob);
    let checked = Tables::read(aligned.bytes())
        .and_then(Tables::check)
        .ok_or("the module's tables are not a layout this verdict reads, or are corrupt")?;
    let t = checked.tables();
    let mut s = Shape {
        trees: t.trees.len(),
        groups: t.groups,
        class: t.class,
        cols: t.cols,
        splits: 0,
        leaves: 0,
        depth_max: 0,
        depth_mean: 0.0,
        splits_by_feature: vec![(0, 0); t.cols],
        output: t.output,
        average: t.flags & trees::FLAG_AVERAGE != 0,
        base: t.base.to_vec(),
    };
    let mut depth_sum = 0usize;
    // Each node is walked once: a node two parents share (which `check` allows) would
    // otherwise double the walk at every level.
    let mut seen = vec![false; t.nodes.len()];
    for &[root, _] in t.trees {
        let mut stack = vec![(root as i32, 0usize)];
        let mut deepest = 0;
        while let Some((i, d)) = stack.pop() {
            if i < 0 {
                s.leaves += 1;
                deepest = deepest.max(d);
                continue;
            }
            let n = t
                .nodes
                .get(i as usize)
                .ok_or("a tree names a node out of the tables")?;
            if std::mem::replace(&mut seen[i as usize], true) {
                return Err("a node is reached twice (not a tree)".into());
            }
            s.splits += 1;
            let f = s
                .splits_by_feature
                .get_mut((n.meta & trees::META_FEATURE) as usize)
                .ok_or("a split names a feature out of range")?;
            if n.meta & trees::META_CATEGORICAL != 0 {
                f.1 += 1;
            } else {
                f.0 += 1;
            }
            for c in [n.left, n.right] {
                if c >= 0 && c <= i {
                    return Err("a tree's child comes before its parent".into());
                }
                stack.push((c, d + 1));
            }
        }
        depth_sum += deepest;
        s.depth_max = s.depth_max.max(deepest);
    }
    s.depth_mean = depth_sum as f64 / s.trees.max(1) as f64;
    Ok(s)
}

/// `bytes` copied into `words`, viewed as bytes.
fn bytemuck_copy<'a>(words: &'a mut [u64], bytes: &[u8]) -> &'a [u8] {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    // SAFETY: u64s are plain bytes; the view covers only the copied length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), bytes.len()) }
}

/// An aligned copy of a blob the native scorer can read (the bench and the tests).
pub struct Aligned(Vec<u64>, usize);

impl Aligned {
    pub fn new(blob: &[u8]) -> Aligned {
        let mut words = vec![0u64; blob.len().div_ceil(8)];
        bytemuck_copy(&mut words, blob);
        Aligned(words, blob.len())
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytemuck_copy`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Tree;

    fn forest() -> Forest {
        let split = |feature, threshold, left, right| Node::Split {
            feature,
            test: Test::Numerical { threshold },
            default_left: true,
            missing: 0,
            left,
            right,
        };
        Forest {
            format: Format::Xgboost,
            library_version: "test".into(),
            booster: "gbtree".into(),
            objective: "reg:squarederror".into(),
            output: trees::OUT_IDENTITY,
            sigmoid: 1.0,
            features: 2,
            feature_names: Vec::new(),
            feature_types: Vec::new(),
            groups: 1,
            class: 0,
            base: vec![0.5],
            base_text: "5E-1".into(),
            average: false,
            trees: vec![Tree {
                group: 0,
                // Source order differs from pre-order: the root's right child comes first.
                nodes: vec![
                    split(0, 1.0, 2, 1),
                    Node::Leaf(10.0),
                    split(1, 0.0, 3, 4),
                    Node::Leaf(1.0),
                    Node::Leaf(2.0),
                ],
            }],
        }
    }

    fn scores(blob: &[u8], rows: &[f32]) -> Result<Vec<f64>, i32> {
        let a = Aligned::new(blob);
        let mut sums = Box::new(trees::Sums::new());
        let mut out = vec![0.0; rows.len() / 2];
        match trees::score(a.bytes(), &mut sums, out.len(), 2, rows, &mut out) {
            0 => Ok(out),
            code => Err(code),
        }
    }

    #[test]
    fn tables_lay_trees_out_in_pre_order_and_score_them() {
        let blob = encode(&forest()).unwrap();
        let s = shape(&blob).unwrap();
        assert_eq!((s.trees, s.splits, s.leaves, s.depth_max), (1, 2, 3, 2));
        // x0 < 1 goes left to the x1 split; NaN takes the default (left).
        let rows = [0.0, -1.0, 0.0, 1.0, 5.0, 0.0, f32::NAN, f32::NAN];
        assert_eq!(scores(&blob, &rows), Ok(vec![1.5, 2.5, 10.5, 1.5]));
    }

    /// A blob whose indices would lead a walk astray is refused before any walk.
    #[test]
    fn tables_with_a_bad_index_are_refused_whole() {
        let blob = encode(&forest()).unwrap();
        let a = Aligned::new(&blob);
        let nodes_at = {
            let t = Tables::read(a.bytes()).unwrap();
            t.nodes.as_ptr() as usize - a.bytes().as_ptr() as usize
        };
        let corrupt = |at: usize, value: u32| {
            let mut b = blob.clone();
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
            scores(&b, &[0.0, 0.0])
        };
        // Node 0's left child pointing back at itself (a loop), past the nodes, at a leaf
        // that does not exist; node 0's feature out of the row.
        assert_eq!(corrupt(nodes_at + 4, 0), Err(trees::ERR_TABLES));
        assert_eq!(corrupt(nodes_at + 4, 99), Err(trees::ERR_TABLES));
        assert_eq!(corrupt(nodes_at + 4, !7u32), Err(trees::ERR_TABLES));
        assert_eq!(corrupt(nodes_at, 5), Err(trees::ERR_TABLES));
        assert!(
            corrupt(nodes_at + 4, 1).is_ok(),
            "a valid change still scores"
        );
        let mut short = blob.clone();
        short.truncate(blob.len() - 8);
        assert_eq!(scores(&short, &[0.0, 0.0]), Err(trees::ERR_TABLES));
    }
}
