//! LightGBM's text model (`Booster.save_model("m.txt")`, `version=v3`/`v4`): a header of
//! `key=value` lines, then `Tree=i` blocks up to `end of trees`. Numbers are written with
//! 17 significant digits and parse back to the same f64.

use std::collections::HashMap;

use super::{
    CATEGORY_MAX, CategoryBudget, Forest, Format, ImportError, Node, Test, Tree, header_counts,
};
use crate::trees::{MISSING_NAN, OUT_IDENTITY, OUT_SIGMOID, OUT_SOFTMAX};

fn bad(message: impl Into<String>) -> ImportError {
    ImportError::Parse {
        format: "lightgbm",
        message: message.into(),
    }
}

/// Regression objectives whose prediction is the raw sum.
const IDENTITY: [&str; 6] = [
    "regression",
    "regression_l1",
    "huber",
    "fair",
    "quantile",
    "mape",
];

fn list<T: std::str::FromStr>(
    block: &HashMap<&str, &str>,
    key: &str,
    t: usize,
) -> Result<Vec<T>, ImportError> {
    let Some(v) = block.get(key) else {
        return Ok(Vec::new());
    };
    v.split_whitespace()
        .map(|x| {
            x.parse()
                .map_err(|_| bad(format!("tree {t}: {key}: {x:?} is not a number")))
        })
        .collect()
}

fn key_values<'a>(lines: &[&'a str]) -> HashMap<&'a str, &'a str> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

pub fn parse(bytes: &[u8]) -> Result<Forest, ImportError> {
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let first_tree = lines
        .iter()
        .position(|l| l.starts_with("Tree="))
        .ok_or_else(|| bad("no `Tree=` block (is this LightGBM's text model?)"))?;
    let header_lines = &lines[..first_tree];
    if !header_lines.iter().any(|l| l.trim() == "tree") {
        return Err(bad("the header has no `tree` line"));
    }
    let header = key_values(header_lines);
    let average = header_lines.iter().any(|l| l.trim() == "average_output");
    let version = header.get("version").copied().unwrap_or("unknown");
    if !matches!(version, "v3" | "v4") {
        return Err(ImportError::Unsupported(format!(
            "LightGBM model version {version}: verdict imports v3 and v4"
        )));
    }
    let get = |k: &str| -> Result<usize, ImportError> {
        header
            .get(k)
            .ok_or_else(|| bad(format!("the header has no {k}")))?
            .parse()
            .map_err(|_| bad(format!("{k} is not a whole number")))
    };
    let per_iteration = get("num_tree_per_iteration")?;
    let classes = get("num_class")?;
    let features = get("max_feature_idx")?
        .checked_add(1)
        .ok_or_else(|| bad("max_feature_idx is too large"))?;
    header_counts(features, per_iteration.max(classes))?;
    let objective_line = header
        .get("objective")
        .copied()
        .ok_or_else(|| ImportError::Unsupported(
            "the model has no objective (a custom objective?): verdict cannot know its output transform".into(),
        ))?;
    let mut words = objective_line.split_whitespace();
    let name = words.next().unwrap_or("");
    let params: HashMap<&str, &str> = words
        .filter_map(|w| w.split_once(':').or(Some((w, ""))))
        .collect();
    let mut sigmoid = 1.0;
    let output = match name {
        "binary" => {
            sigmoid = params
                .get("sigmoid")
                .ok_or_else(|| bad("objective binary without sigmoid:"))?
                .parse::<f64>()
                .map_err(|_| bad("objective binary: sigmoid is not a number"))?;
            OUT_SIGMOID
        }
        "multiclass" => OUT_SOFTMAX,
        n if IDENTITY.contains(&n) && !params.contains_key("sqrt") => OUT_IDENTITY,
        _ => {
            return Err(ImportError::Unsupported(format!(
                "objective `{objective_line}` is not supported; verdict imports binary, \
                 multiclass and {} (without sqrt)",
                IDENTITY.join(", ")
            )));
        }
    };
    if per_iteration == 0
        || (output == OUT_SOFTMAX) != (per_iteration > 1)
        || per_iteration != classes.max(1)
    {
        return Err(bad(format!(
            "num_tree_per_iteration {per_iteration} does not fit objective `{objective_line}` with num_class {classes}"
        )));
    }
    let feature_names: Vec<String> = header
        .get("feature_names")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if !feature_names.is_empty() && feature_names.len() != features {
        return Err(bad(format!(
            "{} feature names for max_feature_idx {}",
            feature_names.len(),
            features - 1
        )));
    }
    let end = lines
        .iter()
        .position(|l| l.trim() == "end of trees")
        .ok_or_else(|| bad("no `end of trees` line (a truncated file?)"))?;
    let mut budget = CategoryBudget::new();
    let mut trees = Vec::new();
    let mut categorical = vec![false; features];
    let mut i = first_tree;
    while i < end {
        if !lines[i].starts_with("Tree=") {
            i += 1;
            continue;
        }
        let t = trees.len();
        let stop = lines[i + 1..end]
            .iter()
            .position(|l| l.starts_with("Tree="))
            .map_or(end, |p| i + 1 + p);
        let block = key_values(&lines[i + 1..stop]);
        let tree = tree(t, &block, features, &mut categorical, &mut budget)?;
        trees.push(Tree {
            group: t % per_iteration,
            nodes: tree,
        });
        i = stop;
    }
    if trees.len() % per_iteration != 0 {
        return Err(bad(format!(
            "{} trees is not a whole number of iterations of {per_iteration}",
            trees.len()
        )));
    }
    let feature_types = categorical
        .iter()
        .map(|&c| if c { "categorical" } else { "numerical" }.to_string())
        .collect();
    Ok(Forest {
        format: Format::Lightgbm,
        library_version: version.to_string(),
        booster: if average { "rf" } else { "gbdt" }.to_string(),
        objective: objective_line.to_string(),
        output,
        sigmoid,
        features,
        feature_names,
        feature_types,
        groups: per_iteration,
        class: 0,
        base: vec![0.0; per_iteration],
        base_text: "0 (folded into the first trees' leaves)".to_string(),
        average,
        trees,
    })
}

fn tree(
    t: usize,
    block: &HashMap<&str, &str>,
    features: usize,
    categorical: &mut [bool],
    budget: &mut CategoryBudget,
) -> Result<Vec<Node>, ImportError> {
    if block.get("is_linear").is_some_and(|v| *v != "0") {
        return Err(ImportError::Unsupported(format!(
            "tree {t} is a linear tree (linear_tree=true); verdict imports constant leaves"
        )));
    }
    let leaves: usize = block
        .get("num_leaves")
        .ok_or_else(|| bad(format!("tree {t}: no num_leaves")))?
        .parse()
        .map_err(|_| bad(format!("tree {t}: num_leaves is not a whole number")))?;
    let leaf_value: Vec<f64> = list(block, "leaf_value", t)?;
    if leaves == 0 || leaf_value.len() != leaves {
        return Err(bad(format!(
            "tree {t}: {} leaf values for num_leaves {leaves}",
            leaf_value.len()
        )));
    }
    if leaves == 1 {
        return Ok(vec![Node::Leaf(leaf_value[0])]);
    }
    let splits = leaves - 1;
    let feature: Vec<usize> = list(block, "split_feature", t)?;
    let threshold: Vec<f64> = list(block, "threshold", t)?;
    let decision: Vec<u32> = list(block, "decision_type", t)?;
    let left: Vec<i64> = list(block, "left_child", t)?;
    let right: Vec<i64> = list(block, "right_child", t)?;
    if [
        feature.len(),
        threshold.len(),
        decision.len(),
        left.len(),
        right.len(),
    ]
    .iter()
    .any(|&l| l != splits)
    {
        return Err(bad(format!(
            "tree {t}: its split arrays do not all have num_leaves - 1 = {splits} entries"
        )));
    }
    let bounds: Vec<usize> = list(block, "cat_boundaries", t)?;
    let words: Vec<u32> = list(block, "cat_threshold", t)?;
    // Nodes: splits 0..splits, then leaf j at splits + j.
    let child = |c: i64, i: usize| -> Result<usize, ImportError> {
        if c >= 0 {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < splits)
                .ok_or_else(|| bad(format!("tree {t} node {i}: child {c} is out of the tree")))
        } else {
            let leaf = !c as usize;
            (leaf < leaves)
                .then_some(splits + leaf)
                .ok_or_else(|| bad(format!("tree {t} node {i}: leaf {leaf} is out of the tree")))
        }
    };
    let mut nodes = Vec::with_capacity(splits + leaves);
    for i in 0..splits {
        let d = decision[i];
        let f = feature[i];
        if f >= features {
            return Err(bad(format!(
                "tree {t} node {i}: split_feature {f} is over max_feature_idx {}",
                features - 1
            )));
        }
        let test = if d & 1 == 1 {
            categorical[f] = true;
            let k = threshold[i];
            let sets = bounds.len().saturating_sub(1);
            let k = (k >= 0.0 && k.fract() == 0.0 && k < sets as f64)
                .then_some(k as usize)
                .ok_or_else(|| {
                    bad(format!(
                        "tree {t} node {i}: categorical threshold {k:?} names no set"
                    ))
                })?;
            let set_words = words.get(bounds[k]..bounds[k + 1]).ok_or_else(|| {
                bad(format!(
                    "tree {t} node {i}: cat_boundaries out of cat_threshold"
                ))
            })?;
            if set_words.len() > CATEGORY_MAX as usize / 32 + 1 {
                return Err(ImportError::Limit(format!(
                    "tree {t} node {i}: a categorical set of {} words names categories over {CATEGORY_MAX}",
                    set_words.len()
                )));
            }
            budget.take(set_words.iter().map(|w| w.count_ones() as usize).sum())?;
            let set = set_words
                .iter()
                .enumerate()
                .flat_map(|(w, bits)| {
                    (0..32)
                        .filter(move |b| bits >> b & 1 == 1)
                        .map(move |b| (w * 32 + b) as u32)
                })
                .collect();
            Test::Categorical { set }
        } else {
            Test::Numerical {
                threshold: threshold[i],
            }
        };
        let missing = (d >> 2) & 3;
        if missing > MISSING_NAN {
            return Err(bad(format!(
                "tree {t} node {i}: decision_type {d}: missing type 3"
            )));
        }
        nodes.push(Node::Split {
            feature: f,
            test,
            default_left: d & 2 != 0,
            missing,
            left: child(left[i], i)?,
            right: child(right[i], i)?,
        });
    }
    nodes.extend(leaf_value.into_iter().map(Node::Leaf));
    Ok(nodes)
}
