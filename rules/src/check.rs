//! The checker: syntax trees of one or more files -> one typed [`Program`], or every error
//! in them. It resolves names (event fields, declared attributes, lists, velocity keys,
//! models), types every expression, loads list files (paths relative to the rules file that
//! declares them; an entry that does not parse is reported at its line in the list file),
//! and proves policy arms reachable where their conditions only read `score`.
//!
//! An expression that already failed yields `None` and its parents stay quiet, so one
//! mistake is reported once.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::ast::{self, AttrType, BinOp, Expr, ExprKind, Item, ListSource, UnOp};
use crate::diag::{Diagnostic, RuleError, Source, Span};
use crate::event::{FIELDS, Field, IpNet, Ty};
use crate::ir::*;
use crate::{Limits, Loader, ModelInput};

/// One parsed rules file and the directory its list paths are relative to.
pub struct ParsedFile {
    pub source: Source,
    pub dir: PathBuf,
    pub ast: ast::File,
}

/// Checks `files` as one rule set. Returns the program and every file read (the rules files,
/// then list files), or every error.
pub fn check(
    files: &[ParsedFile],
    loader: &dyn Loader,
    models: &[ModelInput],
    limits: &Limits,
) -> Result<(Program, Vec<Source>), Vec<RuleError>> {
    let mut c = Checker {
        sources: files.iter().map(|f| f.source.clone()).collect(),
        dirs: files.iter().map(|f| f.dir.clone()).collect(),
        errors: Vec::new(),
        file: 0,
        loader,
        known_models: models,
        limits,
        lists: Vec::new(),
        attrs: Vec::new(),
        velocity: Vec::new(),
        models: Vec::new(),
        scope: Scope::Rule,
    };
    c.declare(files);
    let mut rules = Vec::new();
    let mut policy = None;
    let mut rule_names: HashMap<String, (usize, Span)> = HashMap::new();
    let mut fallbacks: HashMap<String, (f64, usize, Span)> = HashMap::new();
    for (file, parsed) in files.iter().enumerate() {
        c.file = file;
        for item in &parsed.ast.items {
            match item {
                Item::Rule(r) => {
                    if let Some(&(f, at)) = rule_names.get(&r.name.name) {
                        let where_ = c.position(f, at);
                        c.error(
                            r.name.span,
                            format!("rule `{}` is already defined at {where_}", r.name.name),
                        );
                        continue;
                    }
                    rule_names.insert(r.name.name.clone(), (file, r.name.span));
                    if let Some(rule) = c.rule(r) {
                        rules.push(rule);
                    }
                }
                Item::Policy(p) => {
                    if policy.is_some() {
                        c.error(p.span, "a second `policy`: a rule set has exactly one");
                        continue;
                    }
                    policy = Some(c.policy(p));
                }
                Item::Fallback(f) => c.fallback(f, &mut fallbacks),
                Item::List(_) | Item::Attribute(_) => {}
            }
        }
    }
    let model_features = c.model_features();
    let model_absent_missing = c
        .models
        .iter()
        .map(|m| {
            c.known_models
                .iter()
                .any(|k| &k.name == m && k.absent_features_missing)
        })
        .collect();
    let model_fallbacks = c
        .models
        .iter()
        .map(|m| fallbacks.get(m).map_or(0.0, |f| f.0))
        .collect();
    if rules.len() > limits.rules_max {
        c.file = 0;
        c.error(
            Span::default(),
            format!(
                "{} rules; the limit is {} (RULES_MAX)",
                rules.len(),
                limits.rules_max
            ),
        );
    }
    c.load_unused_lists();
    if !c.errors.is_empty() {
        let mut errors = std::mem::take(&mut c.errors);
        errors.sort_by_key(|(f, d)| (*f, d.span.start));
        return Err(errors
            .iter()
            .map(|(f, d)| RuleError::new(&c.sources[*f], d))
            .collect());
    }
    // Evaluation and report order: priority first (highest wins), then as written.
    rules.sort_by_key(|r: &Rule| std::cmp::Reverse(r.priority));
    let sources = std::mem::take(&mut c.sources);
    let program = Program {
        rules,
        lists: c
            .lists
            .into_iter()
            .map(|l| List {
                name: l.name,
                values: l
                    .values
                    .expect("every list is loaded when checking succeeds"),
                origin: l.origin,
            })
            .collect(),
        attributes: c.attrs,
        velocity: c.velocity,
        models: c.models,
        model_features,
        model_absent_missing,
        model_fallbacks,
        policy: policy.flatten(),
    };
    Ok((program, sources))
}

/// Where names are being resolved: what `score`, velocity and models mean there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Rule,
    Policy,
    /// The value argument of `sum` / `distinct`: no nested velocity, models or score.
    VelocityField,
    /// A model's feature (from its manifest): no models or score.
    Feature,
}

struct ListEntry {
    name: String,
    decl_file: usize,
    decl: ast::ListDecl,
    /// The element type, fixed by the first use (`device in blocked_devices`).
    ty: Option<Ty>,
    values: Option<SetValues>,
    origin: String,
}

struct Checker<'a> {
    sources: Vec<Source>,
    /// Each rules file's directory: list paths are relative to it.
    dirs: Vec<PathBuf>,
    errors: Vec<(usize, Diagnostic)>,
    /// The file being checked (an index into `sources`).
    file: usize,
    loader: &'a dyn Loader,
    known_models: &'a [ModelInput],
    limits: &'a Limits,
    lists: Vec<ListEntry>,
    attrs: Vec<Attribute>,
    velocity: Vec<VelocitySpec>,
    models: Vec<String>,
    scope: Scope,
}

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.errors
            .push((self.file, Diagnostic::new(span, message.into())));
    }

    fn position(&self, file: usize, span: Span) -> String {
        let (line, col) = self.sources[file].line_col(span.start);
        format!("{}:{line}:{col}", self.sources[file].path)
    }

    fn text(&self, span: Span) -> &str {
        let text = &self.sources[self.file].text;
        text.get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }

    // ---- declarations ----

    fn declare(&mut self, files: &[ParsedFile]) {
        let mut seen: HashMap<String, (usize, Span)> = HashMap::new();
        for (file, parsed) in files.iter().enumerate() {
            self.file = file;
            for item in &parsed.ast.items {
                let (name, what) = match item {
                    Item::List(l) => (&l.name, "a list"),
                    Item::Attribute(a) => (&a.name, "an attribute"),
                    _ => continue,
                };
                if let Some(why) = reserved(&name.name) {
                    self.error(
                        name.span,
                        format!("`{}` {why} and cannot name {what}", name.name),
                    );
                    continue;
                }
                if let Some(&(f, at)) = seen.get(&name.name) {
                    let where_ = self.position(f, at);
                    self.error(
                        name.span,
                        format!("`{}` is already declared at {where_}", name.name),
                    );
                    continue;
                }
                seen.insert(name.name.clone(), (file, name.span));
                match item {
                    Item::List(l) => self.lists.push(ListEntry {
                        name: l.name.name.clone(),
                        decl_file: file,
                        decl: l.clone(),
                        ty: None,
                        values: None,
                        origin: String::new(),
                    }),
                    Item::Attribute(a) => {
                        if let Some(attr) = self.attribute(a) {
                            self.attrs.push(attr);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn attribute(&mut self, a: &ast::AttrDecl) -> Option<Attribute> {
        let ty = match a.ty {
            AttrType::String => Ty::Str,
            AttrType::Number => Ty::Num,
            AttrType::Bool => Ty::Bool,
        };
        let default = match &a.default {
            None => match ty {
                Ty::Str => AttrDefault::Str("".into()),
                Ty::Num => AttrDefault::Num(0.0),
                _ => AttrDefault::Bool(false),
            },
            Some(e) => match (ty, constant(e)) {
                (Ty::Str, Some(Const::Str(s))) => AttrDefault::Str(s.into()),
                (Ty::Num, Some(Const::Num(x))) => AttrDefault::Num(x),
                (Ty::Bool, Some(Const::Bool(b))) => AttrDefault::Bool(b),
                _ => {
                    self.error(
                        e.span,
                        format!(
                            "the default of `{}` must be a literal of its type, {}",
                            a.name.name,
                            ty.name()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(Attribute {
            name: a.name.name.clone(),
            ty,
            default,
        })
    }

    // ---- rules and policy ----

    fn rule(&mut self, r: &ast::RuleDecl) -> Option<Rule> {
        self.scope = Scope::Rule;
        let when = self.expr(&r.when);
        let score = match r.score {
            Some((s, span)) if s.abs() > self.limits.rule_score_abs_max => {
                let max = self.limits.rule_score_abs_max;
                self.error(span, format!("score {s} is out of range -{max}..={max}"));
                None
            }
            Some((s, _)) => Some(s),
            None => Some(0),
        };
        let priority = match r.priority {
            Some((p, span)) if i32::try_from(p).is_err() => {
                self.error(span, format!("priority {p} does not fit in 32 bits"));
                None
            }
            Some((p, _)) => Some(p),
            None => Some(0),
        };
        let when = when?;
        if when.ty != Ty::Bool {
            self.error(
                when.span,
                format!(
                    "a rule's `when` must be true or false; this is {}",
                    when.ty.name()
                ),
            );
            return None;
        }
        Some(Rule {
            name: r.name.name.clone(),
            shadow: r.shadow,
            when,
            score: score?,
            action: r.action.map(|(a, _)| a),
            priority: priority?,
        })
    }

    /// `None` inside when the policy had an error (already reported).
    fn policy(&mut self, p: &ast::Policy) -> Option<Policy> {
        self.scope = Scope::Policy;
        let mut arms = Vec::new();
        let mut ok = true;
        for arm in &p.arms {
            match self.expr(&arm.when) {
                Some(n) if n.ty == Ty::Bool => arms.push((arm.action, n, arm.span)),
                Some(n) => {
                    ok = false;
                    self.error(
                        n.span,
                        format!(
                            "a policy condition must be true or false; this is {}",
                            n.ty.name()
                        ),
                    );
                }
                None => ok = false,
            }
        }
        self.scope = Scope::Rule;
        if !ok {
            return None;
        }
        // Reachability: an arm whose condition only reads `score` is dead when the arms
        // above it already take every score it could match.
        let mut covered = Scores::none();
        for (_, when, span) in &arms {
            if let Some(set) = score_set(when) {
                if set.is_empty() {
                    self.error(*span, "this arm's condition can never be true");
                    return None;
                }
                if set.is_subset(&covered) {
                    self.error(
                        *span,
                        "this arm can never be reached: the arms above it take every score it matches",
                    );
                    return None;
                }
                covered = covered.union(&set);
            }
        }
        if covered.is_all()
            && let Some((_, span)) = p.otherwise
        {
            self.error(
                span,
                "`otherwise` can never be reached: the arms above it take every score",
            );
            return None;
        }
        Some(Policy {
            arms: arms.into_iter().map(|(a, n, _)| (a, n)).collect(),
            otherwise: p.otherwise.map(|(a, _)| a),
        })
    }

    // ---- expressions ----

    fn expr(&mut self, e: &Expr) -> Option<Node> {
        let node = |kind, ty| {
            Some(Node {
                kind,
                ty,
                span: e.span,
            })
        };
        match &e.kind {
            ExprKind::Invalid => None,
            ExprKind::Number(text) => match text.parse::<f64>() {
                Ok(x) if x.is_finite() => node(NodeKind::Num(x), Ty::Num),
                _ => {
                    self.error(e.span, format!("number `{text}` is out of range"));
                    None
                }
            },
            ExprKind::Str(s) => node(NodeKind::Str(s.as_str().into()), Ty::Str),
            ExprKind::Bool(b) => node(NodeKind::Bool(*b), Ty::Bool),
            ExprKind::Ip(text) => match IpNet::parse(text) {
                Ok(net) if u32::from(net.prefix) == if net.addr.is_ipv4() { 32 } else { 128 } => {
                    node(NodeKind::Ip(net.addr), Ty::Ip)
                }
                Ok(_) => {
                    self.error(
                        e.span,
                        format!("network `{text}` can only follow `in` (`ip in {text}`)"),
                    );
                    None
                }
                Err(why) => {
                    self.error(e.span, why);
                    None
                }
            },
            ExprKind::Duration(_) => {
                self.error(
                    e.span,
                    "a window only goes inside count(), sum() or distinct()",
                );
                None
            }
            ExprKind::Name(name) => self.name(name, e.span),
            ExprKind::Index { base, index } => self.feature(base, index, e.span),
            ExprKind::Call { func, args } => self.call(func, args, e.span),
            ExprKind::Set(_) => {
                self.error(e.span, "a set `[...]` can only follow `in`");
                None
            }
            ExprKind::Unary { op, expr } => {
                let inner = self.expr(expr)?;
                let (want, kind) = match op {
                    UnOp::Not => (Ty::Bool, NodeKind::Not as fn(Box<Node>) -> NodeKind),
                    UnOp::Neg => (Ty::Num, NodeKind::Neg as fn(Box<Node>) -> NodeKind),
                };
                if inner.ty != want {
                    let what = if *op == UnOp::Not { "`not`" } else { "`-`" };
                    self.error(
                        inner.span,
                        format!("{what} needs {}, this is {}", want.name(), inner.ty.name()),
                    );
                    return None;
                }
                node(kind(Box::new(inner)), want)
            }
            ExprKind::Binary { op, lhs, rhs } => self.binary(*op, lhs, rhs, e.span),
            ExprKind::In { expr, set, negated } => self.membership(expr, set, *negated, e.span),
        }
    }

    fn name(&mut self, name: &str, span: Span) -> Option<Node> {
        let node = |kind, ty| Some(Node { kind, ty, span });
        if let Some(field) = Field::lookup(name) {
            return node(NodeKind::Field(field), field.ty());
        }
        if let Some(i) = self.attrs.iter().position(|a| a.name == name) {
            return node(NodeKind::Attr(i as u32), self.attrs[i].ty);
        }
        if name == "score" {
            if self.scope == Scope::Policy {
                return node(NodeKind::Score, Ty::Num);
            }
            self.error(
                span,
                "`score` is the policy's running total; only `policy` conditions can read it",
            );
            return None;
        }
        if self.lists.iter().any(|l| l.name == name) {
            self.error(
                span,
                format!("list `{name}` can only follow `in` (`x in {name}`)"),
            );
            return None;
        }
        if name == "features" {
            self.error(span, "`features` needs an index: `features[0]`");
            return None;
        }
        let mut message = format!("unknown field `{name}`");
        if let Some(close) = self.suggest(name) {
            message.push_str(&format!("; did you mean `{close}`?"));
        }
        self.error(span, message);
        None
    }

    /// The known name closest to a misspelt one, if any is close.
    fn suggest(&self, name: &str) -> Option<String> {
        let candidates = FIELDS
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(self.attrs.iter().map(|a| a.name.clone()))
            .chain(self.lists.iter().map(|l| l.name.clone()))
            .chain(["features".to_string()]);
        candidates
            .map(|c| (edit_distance(name, &c), c))
            .filter(|(d, c)| *d <= 2 && *d < c.len())
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
    }

    fn feature(&mut self, base: &Expr, index: &Expr, span: Span) -> Option<Node> {
        if !matches!(&base.kind, ExprKind::Name(n) if n == "features") {
            self.error(base.span, "only `features` can be indexed (`features[3]`)");
            return None;
        }
        let max = self.limits.features_max;
        match &index.kind {
            ExprKind::Number(t) if t.parse::<u32>().is_ok_and(|i| (i as usize) < max) => {
                Some(Node {
                    kind: NodeKind::Feature(t.parse().expect("checked")),
                    ty: Ty::Num,
                    span,
                })
            }
            _ => {
                self.error(
                    index.span,
                    format!(
                        "a feature index is a whole number 0..={} (features[3])",
                        max - 1
                    ),
                );
                None
            }
        }
    }

    fn call(&mut self, func: &ast::Ident, args: &[Expr], span: Span) -> Option<Node> {
        let agg = match func.name.as_str() {
            "count" => Agg::Count,
            "sum" => Agg::Sum,
            "distinct" => Agg::Distinct,
            "model" => return self.model(args, span),
            other => {
                self.error(
                    func.span,
                    format!("unknown function `{other}`: expected count, sum, distinct or model"),
                );
                return None;
            }
        };
        if self.scope == Scope::VelocityField {
            self.error(
                span,
                "a velocity function cannot be nested in another one's value",
            );
            return None;
        }
        let usage = match agg {
            Agg::Count => "count(KEY, WINDOW), e.g. count(account, 60s)",
            Agg::Sum => "sum(VALUE, KEY, WINDOW), e.g. sum(amount, account, 1h)",
            Agg::Distinct => "distinct(VALUE, KEY, WINDOW), e.g. distinct(device, account, 24h)",
        };
        let want = if agg == Agg::Count { 2 } else { 3 };
        if args.len() != want {
            self.error(
                span,
                format!(
                    "`{}` takes {want} arguments, got {}: {usage}",
                    func.name,
                    args.len()
                ),
            );
            return None;
        }
        let (field_arg, key_arg, window_arg) = match args {
            [k, w] => (None, k, w),
            [f, k, w] => (Some(f), k, w),
            _ => unreachable!("argument count checked"),
        };
        let field = match field_arg {
            None => None,
            Some(f) => {
                let outer = self.scope;
                self.scope = Scope::VelocityField;
                let checked = self.expr(f);
                self.scope = outer;
                Some(checked)
            }
        };
        let key = match &key_arg.kind {
            ExprKind::Name(n) => VelocityKey::lookup(n),
            _ => None,
        };
        if key.is_none() {
            self.error(
                key_arg.span,
                format!(
                    "bad velocity key `{}`: expected account, device, ip or merchant",
                    self.text(key_arg.span)
                ),
            );
        }
        let window = match window_arg.kind {
            ExprKind::Duration(ms)
                if (self.limits.window_ms_min..=self.limits.window_ms_max).contains(&ms) =>
            {
                Some(ms)
            }
            ExprKind::Invalid => None,
            _ => {
                self.error(
                    window_arg.span,
                    format!(
                        "bad window `{}`: a window is {} to {} (e.g. 60s, 10m, 1h, 24h)",
                        self.text(window_arg.span),
                        window_text(self.limits.window_ms_min),
                        window_text(self.limits.window_ms_max)
                    ),
                );
                None
            }
        };
        let field = match field {
            None => None,
            Some(None) => return None,
            Some(Some(f)) => {
                let fits = match agg {
                    Agg::Sum => f.ty == Ty::Num,
                    _ => f.ty != Ty::Bool,
                };
                if !fits {
                    let what = if agg == Agg::Sum {
                        "a number"
                    } else {
                        "a string, number or IP address"
                    };
                    self.error(
                        f.span,
                        format!(
                            "`{}` needs {what} to aggregate; this is {}",
                            func.name,
                            f.ty.name()
                        ),
                    );
                    return None;
                }
                Some(f)
            }
        };
        let (key, window_ms) = (key?, window?);
        let key_name = match key {
            VelocityKey::Account => "account",
            VelocityKey::Device => "device",
            VelocityKey::Ip => "ip",
            VelocityKey::Merchant => "merchant",
        };
        let id = match &field {
            None => format!("{}({key_name}, {})", func.name, window_text(window_ms)),
            Some(f) => format!(
                "{}({}, {key_name}, {})",
                func.name,
                canonical(self.text(f.span)),
                window_text(window_ms)
            ),
        };
        let index = match self.velocity.iter().position(|v| v.id == id) {
            Some(i) => i,
            None => {
                if self.velocity.len() >= self.limits.velocity_functions_max {
                    self.error(
                        span,
                        format!(
                            "more than {} distinct velocity functions (VELOCITY_FUNCTIONS_MAX)",
                            self.limits.velocity_functions_max
                        ),
                    );
                    return None;
                }
                self.velocity.push(VelocitySpec {
                    id,
                    agg,
                    key,
                    window_ms,
                    field,
                });
                self.velocity.len() - 1
            }
        };
        Some(Node {
            kind: NodeKind::Velocity(index as u32),
            ty: Ty::Num,
            span,
        })
    }

    fn model(&mut self, args: &[Expr], span: Span) -> Option<Node> {
        let name = match args {
            [
                Expr {
                    kind: ExprKind::Str(name),
                    ..
                },
            ] => name,
            _ => {
                self.error(span, "`model` takes one model name: model(\"fraud_gbdt\")");
                return None;
            }
        };
        if self.scope == Scope::VelocityField {
            self.error(
                span,
                "a model score cannot be aggregated by a velocity function",
            );
            return None;
        }
        if self.scope == Scope::Feature {
            self.error(span, "a model's feature cannot read a model's score");
            return None;
        }
        if !self.known_model(name, args[0].span) {
            return None;
        }
        let index = match self.models.iter().position(|m| m == name) {
            Some(i) => i,
            None => {
                self.models.push(name.clone());
                self.models.len() - 1
            }
        };
        Some(Node {
            kind: NodeKind::Model(index as u32),
            ty: Ty::Num,
            span,
        })
    }

    /// Whether `name` is a loaded model; if not, says so at `span`.
    fn known_model(&mut self, name: &str, span: Span) -> bool {
        if self.known_models.iter().any(|m| m.name == name) {
            return true;
        }
        let known = if self.known_models.is_empty() {
            "no models are loaded".to_string()
        } else {
            let names: Vec<&str> = self.known_models.iter().map(|m| m.name.as_str()).collect();
            format!("loaded: {}", names.join(", "))
        };
        self.error(span, format!("unknown model `{name}` ({known})"));
        false
    }

    /// `fallback model("NAME") = NUMBER`.
    fn fallback(&mut self, f: &ast::FallbackDecl, seen: &mut HashMap<String, (f64, usize, Span)>) {
        let name = match &f.model.kind {
            ExprKind::Call { func, args } if func.name == "model" => match args.as_slice() {
                [
                    Expr {
                        kind: ExprKind::Str(name),
                        span,
                    },
                ] => Some((name.clone(), *span)),
                _ => None,
            },
            _ => None,
        };
        let Some((name, name_span)) = name else {
            self.error(
                f.model.span,
                "`fallback` names one model: fallback model(\"fraud_gbdt\") = 0.5",
            );
            return;
        };
        if !self.known_model(&name, name_span) {
            return;
        }
        let value = match constant(&f.value) {
            Some(Const::Num(x)) => x,
            _ => {
                self.error(
                    f.value.span,
                    "a fallback score is a number: fallback model(\"fraud_gbdt\") = 0.5",
                );
                return;
            }
        };
        if let Some(&(_, file, at)) = seen.get(&name) {
            let where_ = self.position(file, at);
            self.error(
                f.span,
                format!("model `{name}` already has a fallback at {where_}"),
            );
            return;
        }
        seen.insert(name, (value, self.file, f.span));
    }

    /// The features of every model the rules use, checked where the manifest writes them.
    fn model_features(&mut self) -> Vec<Vec<Node>> {
        let outer = (self.scope, self.file);
        self.scope = Scope::Feature;
        let used = self.models.clone();
        let features = used
            .iter()
            .map(|name| {
                let Some(input) = self.known_models.iter().find(|m| &m.name == name) else {
                    return Vec::new();
                };
                let mut nodes = Vec::new();
                for (i, f) in input.features.iter().enumerate() {
                    let (file, text) = self.feature_source(input, i, f);
                    self.file = file;
                    let (expr, errors) = crate::parser::parse_expr(&text);
                    self.errors.extend(errors.into_iter().map(|d| (file, d)));
                    let Some(node) = expr.and_then(|e| self.expr(&e)) else {
                        continue;
                    };
                    if matches!(node.ty, Ty::Num | Ty::Bool) {
                        nodes.push(node);
                    } else {
                        self.error(
                            node.span,
                            format!(
                                "a model's feature is a number or a bool; this is {}",
                                node.ty.name()
                            ),
                        );
                    }
                }
                nodes
            })
            .collect();
        (self.scope, self.file) = outer;
        features
    }

    /// The file a feature's errors point into, and the text to parse: the manifest up to the
    /// feature's end with everything but the feature blanked (so spans are the manifest's own), or, when the
    /// feature is not written verbatim, the feature alone under a name that says where.
    fn feature_source(
        &mut self,
        input: &ModelInput,
        i: usize,
        f: &crate::FeatureInput,
    ) -> (usize, String) {
        if let (Some(at), Some(manifest)) = (f.offset, &input.manifest)
            && manifest.text.get(at..at + f.expr.len()) == Some(f.expr.as_str())
        {
            let file = match self.sources.iter().position(|s| s.path == manifest.path) {
                Some(file) => file,
                None => {
                    self.sources.push(manifest.clone());
                    self.sources.len() - 1
                }
            };
            let range = at..at + f.expr.len();
            // Cut at the feature's end, so "unexpected end" points just after it.
            let masked: Vec<u8> = manifest.text.as_bytes()[..range.end]
                .iter()
                .copied()
                .enumerate()
                .map(|(j, b)| {
                    if range.contains(&j) || b == b'\n' {
                        b
                    } else {
                        b' '
                    }
                })
                .collect();
            let masked = String::from_utf8(masked).expect("ASCII blanks keep UTF-8 whole");
            return (file, masked);
        }
        let place = match &input.manifest {
            Some(m) => format!("{} features[{i}]", m.path),
            None => format!("model {} features[{i}]", input.name),
        };
        self.sources.push(Source::new(place, f.expr.clone()));
        (self.sources.len() - 1, f.expr.clone())
    }

    fn binary(&mut self, op: BinOp, lhs: &Expr, rhs: &Expr, span: Span) -> Option<Node> {
        let l = self.expr(lhs);
        let r = self.expr(rhs);
        let (l, r) = (l?, r?);
        let symbol = binop_symbol(op);
        let mismatch = |c: &mut Self, want: &str| {
            c.error(
                span,
                format!(
                    "type mismatch: `{symbol}` needs {want}; the left side is {} and the right side is {}",
                    l.ty.name(),
                    r.ty.name()
                ),
            );
            None
        };
        let (l, r) = (Box::new(l.clone()), Box::new(r.clone()));
        let (kind, ty) = match op {
            BinOp::And | BinOp::Or => {
                if l.ty != Ty::Bool || r.ty != Ty::Bool {
                    return mismatch(self, "true/false on both sides");
                }
                let kind = if op == BinOp::And {
                    NodeKind::And(l, r)
                } else {
                    NodeKind::Or(l, r)
                };
                (kind, Ty::Bool)
            }
            BinOp::Eq | BinOp::Ne => {
                if l.ty != r.ty {
                    return mismatch(self, "both sides of one type");
                }
                let op = if op == BinOp::Eq {
                    CmpOp::Eq
                } else {
                    CmpOp::Ne
                };
                (NodeKind::Cmp { op, lhs: l, rhs: r }, Ty::Bool)
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if l.ty != Ty::Num || r.ty != Ty::Num {
                    return mismatch(self, "numbers on both sides");
                }
                let op = match op {
                    BinOp::Lt => CmpOp::Lt,
                    BinOp::Le => CmpOp::Le,
                    BinOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                (NodeKind::Cmp { op, lhs: l, rhs: r }, Ty::Bool)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                if l.ty != Ty::Num || r.ty != Ty::Num {
                    return mismatch(self, "numbers on both sides");
                }
                let op = match op {
                    BinOp::Add => ArithOp::Add,
                    BinOp::Sub => ArithOp::Sub,
                    BinOp::Mul => ArithOp::Mul,
                    _ => ArithOp::Div,
                };
                (NodeKind::Arith { op, lhs: l, rhs: r }, Ty::Num)
            }
            BinOp::StartsWith | BinOp::EndsWith | BinOp::Contains => {
                if l.ty != Ty::Str || r.ty != Ty::Str {
                    return mismatch(self, "strings on both sides");
                }
                let op = match op {
                    BinOp::StartsWith => StrOp::StartsWith,
                    BinOp::EndsWith => StrOp::EndsWith,
                    _ => StrOp::Contains,
                };
                (NodeKind::StrOp { op, lhs: l, rhs: r }, Ty::Bool)
            }
        };
        Some(Node { kind, ty, span })
    }

    fn membership(&mut self, expr: &Expr, set: &Expr, negated: bool, span: Span) -> Option<Node> {
        let value = self.expr(expr)?;
        if value.ty == Ty::Bool {
            self.error(
                value.span,
                "`in` works on strings, numbers and IP addresses, not true/false",
            );
            return None;
        }
        let set = match &set.kind {
            ExprKind::Set(items) => SetRef::Literal(self.literal_set(items, value.ty, &value)?),
            ExprKind::Name(name) => SetRef::List(self.use_list(name, set.span, value.ty)?),
            ExprKind::Ip(text) if value.ty == Ty::Ip => match IpNet::parse(text) {
                Ok(net) => SetRef::Literal(SetValues::Ip(vec![net])),
                Err(why) => {
                    self.error(set.span, why);
                    return None;
                }
            },
            ExprKind::Invalid => return None,
            _ => {
                self.error(
                    set.span,
                    "`in` needs a set `[...]`, a list name, or (for `ip`) a network",
                );
                return None;
            }
        };
        Some(Node {
            kind: NodeKind::In {
                expr: Box::new(value),
                set,
                negated,
            },
            ty: Ty::Bool,
            span,
        })
    }

    fn literal_set(&mut self, items: &[Expr], ty: Ty, value: &Node) -> Option<SetValues> {
        let mut values = match ty {
            Ty::Str => SetValues::Str(Vec::new()),
            Ty::Num => SetValues::Num(Vec::new()),
            _ => SetValues::Ip(Vec::new()),
        };
        let mut ok = true;
        for item in items {
            let c = constant(item);
            match (&mut values, c) {
                (SetValues::Str(v), Some(Const::Str(s))) => v.push(s.into()),
                (SetValues::Num(v), Some(Const::Num(x))) => v.push(x),
                (SetValues::Ip(v), Some(Const::Ip(text))) => match IpNet::parse(&text) {
                    Ok(net) => v.push(net),
                    Err(why) => {
                        self.error(item.span, why);
                        ok = false;
                    }
                },
                (_, None) if matches!(item.kind, ExprKind::Invalid) => ok = false,
                (_, c) => {
                    let what = match c {
                        None => "not a literal".to_string(),
                        Some(c) => c.ty().name().to_string(),
                    };
                    self.error(
                        item.span,
                        format!(
                            "type mismatch: this set is matched against {} ({}), but this member is {what}",
                            ty.name(),
                            self.text(value.span)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(values)
    }

    /// Fixes a list's type at its first use (loading it), checks it at later ones.
    fn use_list(&mut self, name: &str, span: Span, ty: Ty) -> Option<u32> {
        let Some(i) = self.lists.iter().position(|l| l.name == name) else {
            let mut message = format!("unknown list `{name}`");
            if let Some(close) = self.suggest(name) {
                message.push_str(&format!("; did you mean `{close}`?"));
            }
            self.error(span, message);
            return None;
        };
        match self.lists[i].ty {
            Some(t) if t == ty => {}
            Some(t) => {
                self.error(
                    span,
                    format!(
                        "type mismatch: list `{name}` is used for {} elsewhere, here for {}",
                        t.plural(),
                        ty.plural()
                    ),
                );
                return None;
            }
            None => {
                self.lists[i].ty = Some(ty);
                self.load_list(i, ty);
            }
        }
        self.lists[i].values.as_ref()?;
        Some(i as u32)
    }

    /// Lists no rule uses are still loaded, so their mistakes show: an inline list as the
    /// type of its first member, a file as strings.
    fn load_unused_lists(&mut self) {
        for i in 0..self.lists.len() {
            if self.lists[i].ty.is_none() {
                let ty = match &self.lists[i].decl.source {
                    ListSource::Inline(items) => {
                        items.first().and_then(constant).map_or(Ty::Str, |c| c.ty())
                    }
                    ListSource::File { .. } => Ty::Str,
                };
                self.lists[i].ty = Some(ty);
                self.load_list(i, ty);
            }
        }
    }

    /// Reads a list's entries as `ty`; errors point into the list file.
    fn load_list(&mut self, i: usize, ty: Ty) {
        let decl = self.lists[i].decl.clone();
        let decl_file = self.lists[i].decl_file;
        let outer_file = self.file;
        self.file = decl_file;
        let loaded = match &decl.source {
            ListSource::Inline(items) => {
                let fake = Node {
                    kind: NodeKind::Bool(false),
                    ty,
                    span: decl.name.span,
                };
                self.literal_set(items, ty, &fake)
                    .map(|v| (v, "inline".to_string()))
            }
            ListSource::File { path, span } => self.list_file(path, *span, ty),
        };
        self.file = outer_file;
        if let Some((values, origin)) = loaded {
            if values.len() > self.limits.list_entries_max {
                self.file = decl_file;
                self.error(
                    decl.name.span,
                    format!(
                        "list `{}` has {} entries; the limit is {} (LIST_ENTRIES_MAX)",
                        decl.name.name,
                        values.len(),
                        self.limits.list_entries_max
                    ),
                );
                self.file = outer_file;
                return;
            }
            self.lists[i].values = Some(values);
            self.lists[i].origin = origin;
        }
    }

    fn list_file(&mut self, path: &str, span: Span, ty: Ty) -> Option<(SetValues, String)> {
        let resolved = self.dirs[self.file].join(path);
        let text = match self.loader.read(&resolved, self.limits.list_file_bytes_max) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    span,
                    format!("cannot read list file `{}`: {e}", resolved.display()),
                );
                return None;
            }
        };
        let list_file = self.sources.len();
        self.sources
            .push(Source::new(resolved.display().to_string(), text));
        let mut values = match ty {
            Ty::Str => SetValues::Str(Vec::new()),
            Ty::Num => SetValues::Num(Vec::new()),
            _ => SetValues::Ip(Vec::new()),
        };
        let mut errors = Vec::new();
        let text = &self.sources[list_file].text;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let line_start = offset;
            offset += line.len();
            let content = line.split('#').next().unwrap_or("");
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            let at = line_start + (content.len() - content.trim_start().len());
            let entry_span = Span::new(at, at + entry.len());
            match &mut values {
                SetValues::Str(v) => v.push(entry.into()),
                SetValues::Num(v) => match entry.parse::<f64>() {
                    Ok(x) if x.is_finite() => v.push(x),
                    _ => errors.push(Diagnostic::new(
                        entry_span,
                        format!("`{entry}` is not a number (this list is matched against numbers)"),
                    )),
                },
                SetValues::Ip(v) => match IpNet::parse(entry) {
                    Ok(net) => v.push(net),
                    Err(why) => errors.push(Diagnostic::new(entry_span, why)),
                },
            }
        }
        let failed = !errors.is_empty();
        self.errors
            .extend(errors.into_iter().map(|d| (list_file, d)));
        if failed {
            return None;
        }
        Some((values, resolved.display().to_string()))
    }
}

/// Why a name cannot be declared, if it cannot.
fn reserved(name: &str) -> Option<&'static str> {
    if Field::lookup(name).is_some() {
        Some("is an event field")
    } else if name == "features" || name == "score" {
        Some("is built in")
    } else {
        None
    }
}

/// A literal, as written in a set or a default.
enum Const {
    Str(String),
    Num(f64),
    Bool(bool),
    Ip(String),
}

impl Const {
    fn ty(&self) -> Ty {
        match self {
            Const::Str(_) => Ty::Str,
            Const::Num(_) => Ty::Num,
            Const::Bool(_) => Ty::Bool,
            Const::Ip(_) => Ty::Ip,
        }
    }
}

fn constant(e: &Expr) -> Option<Const> {
    match &e.kind {
        ExprKind::Str(s) => Some(Const::Str(s.clone())),
        ExprKind::Number(t) => t
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .map(Const::Num),
        ExprKind::Bool(b) => Some(Const::Bool(*b)),
        ExprKind::Ip(t) => Some(Const::Ip(t.clone())),
        ExprKind::Unary {
            op: UnOp::Neg,
            expr,
        } => match constant(expr) {
            Some(Const::Num(x)) => Some(Const::Num(-x)),
            _ => None,
        },
        _ => None,
    }
}

fn binop_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Or => "or",
        BinOp::And => "and",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::StartsWith => "starts_with",
        BinOp::EndsWith => "ends_with",
        BinOp::Contains => "contains",
    }
}

/// A window in its largest whole unit: 3600000 -> "1h".
pub fn window_text(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Source text with runs of whitespace collapsed, for velocity identities.
fn canonical(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

// ---- which scores a policy condition takes ----

/// A set of whole scores, as sorted disjoint inclusive ranges within the i32 range (the
/// decision's score is an i32).
#[derive(Debug, Clone, PartialEq)]
struct Scores(Vec<(i64, i64)>);

const SCORE_MIN: i64 = i32::MIN as i64;
const SCORE_MAX: i64 = i32::MAX as i64;

impl Scores {
    fn none() -> Scores {
        Scores(Vec::new())
    }

    fn all() -> Scores {
        Scores(vec![(SCORE_MIN, SCORE_MAX)])
    }

    fn range(lo: i64, hi: i64) -> Scores {
        let (lo, hi) = (lo.max(SCORE_MIN), hi.min(SCORE_MAX));
        if lo > hi {
            Scores::none()
        } else {
            Scores(vec![(lo, hi)])
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn is_all(&self) -> bool {
        *self == Scores::all()
    }

    fn union(&self, other: &Scores) -> Scores {
        let mut all: Vec<(i64, i64)> = self.0.iter().chain(&other.0).copied().collect();
        all.sort();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (lo, hi) in all {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Scores(out)
    }

    fn complement(&self) -> Scores {
        let mut out = Vec::new();
        let mut next = SCORE_MIN;
        for &(lo, hi) in &self.0 {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi + 1;
        }
        if next <= SCORE_MAX {
            out.push((next, SCORE_MAX));
        }
        Scores(out)
    }

    fn intersect(&self, other: &Scores) -> Scores {
        self.complement().union(&other.complement()).complement()
    }

    fn is_subset(&self, other: &Scores) -> bool {
        self.intersect(&other.complement()).is_empty()
    }
}

/// The exact scores for which `n` is true, when `n` reads nothing but `score` and numbers.
fn score_set(n: &Node) -> Option<Scores> {
    match &n.kind {
        NodeKind::Bool(true) => Some(Scores::all()),
        NodeKind::Bool(false) => Some(Scores::none()),
        NodeKind::Not(inner) => score_set(inner).map(|s| s.complement()),
        NodeKind::And(a, b) => Some(score_set(a)?.intersect(&score_set(b)?)),
        NodeKind::Or(a, b) => Some(score_set(a)?.union(&score_set(b)?)),
        NodeKind::Cmp { op, lhs, rhs } => match (&lhs.kind, &rhs.kind) {
            (NodeKind::Score, NodeKind::Num(k)) => Some(compare(*op, *k)),
            (NodeKind::Num(k), NodeKind::Score) => Some(compare(flip(*op), *k)),
            _ => None,
        },
        _ => None,
    }
}

/// `score OP k` over whole scores.
fn compare(op: CmpOp, k: f64) -> Scores {
    // Beyond the i32 range every threshold behaves like one just past it.
    let k = k.clamp(SCORE_MIN as f64 - 1.0, SCORE_MAX as f64 + 1.0);
    let (floor, ceil) = (k.floor() as i64, k.ceil() as i64);
    let whole = k.fract() == 0.0;
    match op {
        CmpOp::Ge => Scores::range(ceil, SCORE_MAX),
        CmpOp::Gt => Scores::range(floor + 1, SCORE_MAX),
        CmpOp::Le => Scores::range(SCORE_MIN, floor),
        CmpOp::Lt => Scores::range(SCORE_MIN, ceil - 1),
        CmpOp::Eq if whole => Scores::range(floor, floor),
        CmpOp::Eq => Scores::none(),
        CmpOp::Ne if whole => Scores::range(floor, floor).complement(),
        CmpOp::Ne => Scores::all(),
    }
}

/// `k OP score` is `score FLIP(OP) k`.
fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_sets_union_intersect_and_complement() {
        let high = compare(CmpOp::Ge, 80.0);
        let mid = compare(CmpOp::Ge, 40.0);
        assert!(high.is_subset(&mid));
        assert!(!mid.is_subset(&high));
        assert!(mid.union(&mid.complement()).is_all());
        assert!(compare(CmpOp::Gt, 79.5).is_subset(&high));
        assert_eq!(compare(CmpOp::Gt, 79.5), high);
        assert!(compare(CmpOp::Eq, 1.5).is_empty());
        assert_eq!(
            compare(CmpOp::Lt, 10.0).intersect(&compare(CmpOp::Ge, 5.0)),
            Scores::range(5, 9)
        );
    }

    #[test]
    fn windows_print_in_their_largest_unit() {
        assert_eq!(window_text(3_600_000), "1h");
        assert_eq!(window_text(90_000), "90s");
        assert_eq!(window_text(1_500), "1500ms");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("amout", "amount"), 1);
        assert_eq!(edit_distance("contry", "country"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }
}
