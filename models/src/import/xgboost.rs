//! XGBoost's JSON model (`Booster.save_model("m.json")`, format version 1.0 and later):
//! gbtree and dart boosters. Floats are parsed from their own text straight to f32, as
//! XGBoost's loader does (an f64 first could round twice).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    CATEGORY_MAX, CategoryBudget, Forest, Format, ImportError, Node, Test, Tree, header_counts,
};
use crate::trees::{OUT_IDENTITY, OUT_SIGMOID, OUT_SOFTMAX};

fn bad(message: impl Into<String>) -> ImportError {
    ImportError::Parse {
        format: "xgboost",
        message: message.into(),
    }
}

/// The objectives verdict imports, and how each turns a margin into the prediction.
pub const OBJECTIVES: [&str; 5] = [
    "binary:logistic",
    "binary:logitraw",
    "reg:squarederror",
    "reg:logistic",
    "multi:softprob",
];

#[derive(Deserialize)]
struct Doc<'a> {
    version: Vec<u32>,
    #[serde(borrow)]
    learner: Learner<'a>,
}

#[derive(Deserialize)]
struct Learner<'a> {
    learner_model_param: LearnerParam,
    #[serde(borrow)]
    gradient_booster: &'a RawValue,
    objective: Objective,
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    feature_types: Vec<String>,
}

#[derive(Deserialize)]
struct LearnerParam {
    base_score: String,
    num_feature: String,
    #[serde(default)]
    num_class: Option<String>,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct BoosterName {
    name: String,
}

#[derive(Deserialize)]
struct GbTree<'a> {
    #[serde(borrow)]
    model: Model<'a>,
}

#[derive(Deserialize)]
struct Dart<'a> {
    #[serde(borrow)]
    gbtree: GbTree<'a>,
    #[serde(borrow)]
    weight_drop: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Model<'a> {
    #[serde(borrow)]
    trees: Vec<JTree<'a>>,
    tree_info: Vec<i64>,
    /// DART from XGBoost 3.3 on keeps its weights here.
    #[serde(borrow, default)]
    weight_drop: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JTree<'a> {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    #[serde(borrow)]
    split_conditions: &'a RawValue,
    default_left: Vec<serde_json::Value>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    categories: Vec<i64>,
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    categories_segments: Vec<u64>,
    #[serde(default)]
    categories_sizes: Vec<u64>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// A JSON array of numbers, each parsed from its text to f32.
fn f32s(raw: &RawValue, what: &str) -> Result<Vec<f32>, ImportError> {
    let text = raw.get().trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| bad(format!("{what} is not an array")))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f32>()
                .map_err(|_| bad(format!("{what}: {v:?} is not a number")))
        })
        .collect()
}

/// `base_score`: "0.5" (1.0-1.1), "5E-1" (1.2-3.0) or "[5E-1]" / "[a,b,c]" (3.1 on).
fn base_scores(text: &str) -> Result<Vec<f32>, ImportError> {
    let t = text.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    inner
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| bad(format!("base_score {text:?} is not a number or a list")))
        })
        .collect()
}

/// XGBoost's `ProbToMargin` for the logistic objectives, in f32 with the C library's
/// `logf` (Rust's `f32::ln` calls it on the host, as XGBoost does): clamp to
/// [1e-6, 1 - 1e-6] (XGBoost 3.2), then `-logf(1/p - 1)`.
fn logit(p: f32) -> f32 {
    let eps = 1e-6f32;
    let p = p.clamp(eps, 1.0 - eps);
    -(1.0f32 / p - 1.0f32).ln()
}

pub fn parse(bytes: &[u8]) -> Result<Forest, ImportError> {
    // UBJSON opens an object as JSON does, then a type marker where JSON has a quote.
    let ubjson =
        bytes.first() == Some(&b'{') && bytes.get(1).is_some_and(|b| b"LlIiUuM$#".contains(b));
    let other = bytes
        .first()
        .is_some_and(|&b| b != b'{' && !b.is_ascii_whitespace());
    if ubjson || other {
        return Err(ImportError::Unsupported(
            "this is not XGBoost's JSON (a UBJSON or binary model?): verdict imports JSON; \
             save it with `booster.save_model(\"model.json\")`"
                .into(),
        ));
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let version = doc
        .version
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(".");
    if doc.version.first().is_none_or(|&m| m < 1) {
        return Err(ImportError::Unsupported(format!(
            "XGBoost model format {version}: verdict imports JSON models of XGBoost 1.0 and later"
        )));
    }
    let l = &doc.learner;
    let objective = l.objective.name.clone();
    if !OBJECTIVES.contains(&objective.as_str()) {
        return Err(ImportError::Unsupported(format!(
            "objective `{objective}` is not supported; verdict imports {}",
            OBJECTIVES.join(", ")
        )));
    }
    let num = |s: &Option<String>, what: &str| -> Result<usize, ImportError> {
        match s {
            None => Ok(0),
            Some(s) => s
                .parse()
                .map_err(|_| bad(format!("{what} {s:?} is not a whole number"))),
        }
    };
    let features = num(
        &Some(l.learner_model_param.num_feature.clone()),
        "num_feature",
    )?;
    let classes = num(&l.learner_model_param.num_class, "num_class")?;
    let targets = num(&l.learner_model_param.num_target, "num_target")?;
    if targets > 1 {
        return Err(ImportError::Unsupported(format!(
            "the model has {targets} targets (multi-target trees); verdict imports single-target models"
        )));
    }
    let groups = classes.max(1);
    header_counts(features, groups)?;
    let booster: BoosterName =
        serde_json::from_str(l.gradient_booster.get()).map_err(|e| bad(e.to_string()))?;
    let (model, weights) = match booster.name.as_str() {
        "gbtree" => {
            let g: GbTree =
                serde_json::from_str(l.gradient_booster.get()).map_err(|e| bad(e.to_string()))?;
            let w = g.model.weight_drop;
            (g.model, w)
        }
        "dart" => {
            let d: Dart =
                serde_json::from_str(l.gradient_booster.get()).map_err(|e| bad(e.to_string()))?;
            let w = d.weight_drop.or(d.gbtree.model.weight_drop);
            (d.gbtree.model, w)
        }
        other => {
            return Err(ImportError::Unsupported(format!(
                "booster `{other}` is not supported: verdict imports tree boosters (gbtree, dart)"
            )));
        }
    };
    let weights = match weights {
        Some(w) => Some(f32s(w, "weight_drop")?),
        None => None,
    };
    if let Some(w) = &weights
        && !w.is_empty()
        && w.len() != model.trees.len()
    {
        return Err(bad(format!(
            "weight_drop has {} weights for {} trees",
            w.len(),
            model.trees.len()
        )));
    }
    if model.tree_info.len() != model.trees.len() {
        return Err(bad(format!(
            "tree_info has {} entries for {} trees",
            model.tree_info.len(),
            model.trees.len()
        )));
    }
    let mut budget = CategoryBudget::new();
    let mut trees = Vec::with_capacity(model.trees.len());
    for (t, jt) in model.trees.iter().enumerate() {
        let weight = weights.as_ref().and_then(|w| w.get(t)).copied();
        let group = usize::try_from(model.tree_info[t]).map_err(|_| {
            bad(format!(
                "tree {t}: tree_info {} is negative",
                model.tree_info[t]
            ))
        })?;
        trees.push(tree(t, jt, weight, &mut budget)?);
        trees[t].group = group;
    }
    let base_f32 = base_scores(&l.learner_model_param.base_score)?;
    let base_f32 = match base_f32.len() {
        1 => vec![base_f32[0]; groups],
        n if n == groups => base_f32,
        n => {
            return Err(bad(format!(
                "base_score has {n} values for {groups} output groups"
            )));
        }
    };
    let (output, base) = match objective.as_str() {
        "binary:logistic" | "reg:logistic" => (
            OUT_SIGMOID,
            base_f32.iter().map(|&p| f64::from(logit(p))).collect(),
        ),
        "multi:softprob" => (
            OUT_SOFTMAX,
            base_f32.iter().map(|&m| f64::from(m)).collect(),
        ),
        _ => (
            OUT_IDENTITY,
            base_f32.iter().map(|&m| f64::from(m)).collect(),
        ),
    };
    if !l.feature_names.is_empty() && l.feature_names.len() != features {
        return Err(bad(format!(
            "{} feature names for num_feature {features}",
            l.feature_names.len()
        )));
    }
    let mut types = l.feature_types.clone();
    if types.is_empty() {
        types = vec!["q".to_string(); features];
    }
    if let Some(t) = types
        .iter()
        .find(|t| !matches!(t.as_str(), "q" | "c" | "int" | "float" | "i"))
    {
        return Err(ImportError::Unsupported(format!(
            "feature type `{t}` is not supported (verdict imports q, int, float, i and c)"
        )));
    }
    Ok(Forest {
        format: Format::Xgboost,
        library_version: version,
        booster: booster.name,
        objective,
        output,
        sigmoid: 1.0,
        features,
        feature_names: l.feature_names.clone(),
        feature_types: types,
        groups,
        class: 0,
        base,
        base_text: l.learner_model_param.base_score.clone(),
        average: false,
        trees,
    })
}

fn tree(
    t: usize,
    jt: &JTree,
    weight: Option<f32>,
    budget: &mut CategoryBudget,
) -> Result<Tree, ImportError> {
    let n = jt.left_children.len();
    if let Some(p) = &jt.tree_param
        && let Some(s) = &p.size_leaf_vector
        && s.parse::<u64>().unwrap_or(0) > 1
    {
        return Err(ImportError::Unsupported(format!(
            "tree {t} has vector leaves (size_leaf_vector {s}); verdict imports scalar leaves"
        )));
    }
    let values = f32s(jt.split_conditions, "split_conditions")?;
    let lens = [
        jt.right_children.len(),
        jt.split_indices.len(),
        values.len(),
        jt.default_left.len(),
    ];
    if n == 0
        || lens.iter().any(|&l| l != n)
        || (!jt.split_type.is_empty() && jt.split_type.len() != n)
    {
        return Err(bad(format!("tree {t}: its node arrays differ in length")));
    }
    let mut sets: Vec<Option<Vec<u32>>> = vec![None; n];
    let cats = (
        &jt.categories_nodes,
        &jt.categories_segments,
        &jt.categories_sizes,
    );
    if cats.0.len() != cats.1.len() || cats.0.len() != cats.2.len() {
        return Err(bad(format!(
            "tree {t}: its categories arrays differ in length"
        )));
    }
    for k in 0..cats.0.len() {
        let node = usize::try_from(cats.0[k])
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| {
                bad(format!(
                    "tree {t}: categories_nodes[{k}] is out of the tree"
                ))
            })?;
        let (from, len) = (cats.1[k] as usize, cats.2[k] as usize);
        let list = jt
            .categories
            .get(from..from.saturating_add(len))
            .ok_or_else(|| bad(format!("tree {t}: categories segment {k} is out of range")))?;
        budget.take(list.len())?;
        let set = list
            .iter()
            .map(|&c| {
                u32::try_from(c)
                    .ok()
                    .filter(|&c| c <= CATEGORY_MAX)
                    .ok_or_else(|| {
                        ImportError::Limit(format!(
                            "tree {t}: category {c} is not in 0..={CATEGORY_MAX}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sets[node].replace(set).is_some() {
            return Err(bad(format!("tree {t}: node {node} has two category lists")));
        }
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let left = jt.left_children[i];
        if left == -1 {
            let leaf = match weight {
                Some(w) => values[i] * w,
                None => values[i],
            };
            nodes.push(Node::Leaf(f64::from(leaf)));
            continue;
        }
        let child = |c: i64| {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < n)
                .ok_or_else(|| bad(format!("tree {t} node {i}: child {c} is out of the tree")))
        };
        let (left, right) = (child(left)?, child(jt.right_children[i])?);
        let feature = usize::try_from(jt.split_indices[i])
            .map_err(|_| bad(format!("tree {t} node {i}: split index is negative")))?;
        let default_left = match &jt.default_left[i] {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Number(v) => v.as_u64() == Some(1),
            other => return Err(bad(format!("tree {t} node {i}: default_left {other}"))),
        };
        let categorical = jt.split_type.get(i).copied().unwrap_or(0);
        let test = match categorical {
            0 => Test::Numerical {
                threshold: f64::from(values[i]),
            },
            1 => Test::Categorical {
                set: sets[i].take().ok_or_else(|| {
                    bad(format!(
                        "tree {t} node {i}: a categorical split without categories"
                    ))
                })?,
            },
            other => {
                return Err(ImportError::Unsupported(format!(
                    "tree {t} node {i}: split type {other} is not supported"
                )));
            }
        };
        nodes.push(Node::Split {
            feature,
            test,
            default_left,
            missing: 0,
            left,
            right,
        });
    }
    Ok(Tree { group: 0, nodes })
}
