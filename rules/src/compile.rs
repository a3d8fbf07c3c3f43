//! The compiler: a checked [`Program`] -> a [`RuleSet`] of closures, built once per epoch.
//!
//! Constants are folded first (`amount > 10 * 100` compares with 1000). Every node becomes a
//! boxed closure over a [`Ctx`]; leaves that are fields, features, velocity or model values
//! are read inline, so `amount > 5000` is one call. Sets are compiled to the cheapest test:
//! a scan for a handful of members, a hash set beyond that, and for IP networks one hash
//! lookup per distinct prefix length. No closure allocates, looks a name up, or walks a tree.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use verdict_net::{Action, ArchivedAttrValue, ArchivedEvent};

use crate::event::{self, Field, IpNet, Ty};
use crate::ir::*;
use crate::velocity::{Sample, VelocityState};

/// What the closures see of one event.
pub struct Ctx<'a> {
    pub event: &'a ArchivedEvent,
    /// `amount`, computed once per event.
    pub amount: f64,
    /// Each velocity function's value for this event (the event counted).
    pub velocity: &'a [f64],
    /// Each model's score for this event, as `Program::models` orders them.
    pub models: &'a [f64],
    /// The accumulated score (read by policy conditions).
    pub score: f64,
}

type BoolFn = Box<dyn Fn(&Ctx) -> bool + Send + Sync>;
type NumFn = Box<dyn Fn(&Ctx) -> f64 + Send + Sync>;
type HashFn = Box<dyn Fn(&Ctx, &foldhash::fast::RandomState) -> u64 + Send + Sync>;

struct CompiledRule {
    when: BoolFn,
    score: i64,
    action: Option<Action>,
    shadow: bool,
}

enum SampleFn {
    Count,
    Sum(NumFn),
    Distinct(HashFn),
}

struct CompiledVelocity {
    key: VelocityKey,
    sample: SampleFn,
}

/// A compiled, immutable rule set: what one epoch decides with. Shared by every core
/// (`Arc<RuleSet>`); evaluation takes the core's own velocity state and scratch space.
pub struct RuleSet {
    program: Program,
    rules: Vec<CompiledRule>,
    names: Vec<Box<str>>,
    velocity: Vec<CompiledVelocity>,
    policy: Option<(Vec<(Action, BoolFn)>, Action)>,
    default_action: Action,
    uid: u64,
    /// Filled in when the set is published.
    pub epoch: u64,
    /// A digest of every source file (rules and lists), for stats and reports.
    pub digest: String,
    /// The files it was built from.
    pub files: Vec<String>,
}

/// One event's result. Reused between events: evaluation clears it and never grows it past
/// the rule set's size, so after the first event it allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub action: Option<Action>,
    pub score: i32,
    /// Indexes of the rules that fired, in report order (see [`RuleSet::rule_name`]).
    pub fired: Vec<u32>,
    pub shadow_fired: Vec<u32>,
    /// Each velocity function's value.
    pub velocity: Vec<f64>,
}

impl Outcome {
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }
}

/// `a` or `b`, whichever takes precedence (deny > review > allow).
pub fn stronger(a: Action, b: Action) -> Action {
    if (b as u8) > (a as u8) { b } else { a }
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl RuleSet {
    /// Compiles a checked program. `default_action` decides when no policy exists and no
    /// rule with an action fired.
    pub fn compile(program: Program, default_action: Action) -> RuleSet {
        let lists: Vec<CompiledSet> = program
            .lists
            .iter()
            .map(|l| CompiledSet::new(&l.values))
            .collect();
        let c = Compiler {
            program: &program,
            lists: &lists,
        };
        let rules = program
            .rules
            .iter()
            .map(|r| CompiledRule {
                when: c.bool(&fold(&r.when)),
                score: r.score,
                action: r.action,
                shadow: r.shadow,
            })
            .collect();
        let velocity = program
            .velocity
            .iter()
            .map(|v| CompiledVelocity {
                key: v.key,
                sample: match (v.agg, &v.field) {
                    (Agg::Count, _) => SampleFn::Count,
                    (Agg::Sum, Some(f)) => SampleFn::Sum(c.num(&fold(f))),
                    (Agg::Distinct, Some(f)) => SampleFn::Distinct(c.hash(&fold(f))),
                    _ => unreachable!("sum and distinct always have a value"),
                },
            })
            .collect();
        let policy = program.policy.as_ref().map(|p| {
            let arms = p
                .arms
                .iter()
                .map(|(a, when)| (*a, c.bool(&fold(when))))
                .collect();
            (arms, p.otherwise.unwrap_or(default_action))
        });
        let names = program
            .rules
            .iter()
            .map(|r| r.name.as_str().into())
            .collect();
        RuleSet {
            rules,
            names,
            velocity,
            policy,
            default_action,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
            digest: String::new(),
            files: Vec::new(),
            program,
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Unique per compiled set (velocity state is laid out per set).
    pub fn uid(&self) -> u64 {
        self.uid
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The name of rule `index` (an entry of `Outcome::fired`).
    pub fn rule_name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }

    pub fn default_action(&self) -> Action {
        self.default_action
    }

    /// A fresh outcome sized for this rule set.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            action: None,
            score: 0,
            fired: Vec::with_capacity(self.rules.len()),
            shadow_fired: Vec::with_capacity(self.rules.len()),
            velocity: Vec::with_capacity(self.velocity.len()),
        }
    }

    /// Decides one event: records it in the velocity state (prepared for this set), runs
    /// every rule, then the policy. `models` holds this event's model scores.
    pub fn evaluate(
        &self,
        event: &ArchivedEvent,
        state: &mut VelocityState,
        models: &[f64],
        out: &mut Outcome,
    ) {
        if state.prepared_for() != self.uid {
            state.prepare(self.uid, &self.program.velocity);
        }
        let mut ctx = Ctx {
            event,
            amount: event::amount(event),
            velocity: &[],
            models,
            score: 0.0,
        };
        out.velocity.clear();
        let ts = event.timestamp_ms.to_native();
        // Each key is hashed once per event, however many functions count by it.
        let mut hashes: [Option<Option<u64>>; 4] = [None; 4];
        for (i, v) in self.velocity.iter().enumerate() {
            let hash = *hashes[v.key as usize].get_or_insert_with(|| match v.key {
                VelocityKey::Account => state.key_hash(event.account_id.as_bytes()),
                VelocityKey::Device => state.key_hash(event.device_id.as_bytes()),
                VelocityKey::Merchant => state.key_hash(event.merchant_id.as_bytes()),
                VelocityKey::Ip => match event::ip(event) {
                    ip if ip.is_unspecified() => None,
                    IpAddr::V4(v4) => state.key_hash(&v4.octets()),
                    IpAddr::V6(v6) => state.key_hash(&v6.octets()),
                },
            });
            let Some(hash) = hash else {
                out.velocity.push(0.0);
                continue;
            };
            let sample = match &v.sample {
                SampleFn::Count => Sample::Count,
                SampleFn::Sum(f) => Sample::Sum(f(&ctx)),
                SampleFn::Distinct(f) => Sample::Distinct(f(&ctx, state.value_hasher())),
            };
            out.velocity.push(state.record_hashed(i, hash, ts, sample));
        }
        ctx.velocity = &out.velocity;
        out.fired.clear();
        out.shadow_fired.clear();
        let mut score = 0i64;
        let mut action: Option<Action> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !(rule.when)(&ctx) {
                continue;
            }
            if rule.shadow {
                out.shadow_fired.push(i as u32);
                continue;
            }
            out.fired.push(i as u32);
            score += rule.score;
            if let Some(a) = rule.action {
                action = Some(action.map_or(a, |b| stronger(a, b)));
            }
        }
        let score = score.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        ctx.score = f64::from(score);
        let decided = match &self.policy {
            Some((arms, otherwise)) => {
                let by_policy = arms
                    .iter()
                    .find(|(_, when)| when(&ctx))
                    .map_or(*otherwise, |(a, _)| *a);
                action.map_or(by_policy, |a| stronger(a, by_policy))
            }
            None => action.unwrap_or(self.default_action),
        };
        out.action = Some(decided);
        out.score = score;
    }
}

// ---- constant folding ----

/// `n` with every constant subtree replaced by its value.
pub fn fold(n: &Node) -> Node {
    let with = |kind| Node {
        kind,
        ty: n.ty,
        span: n.span,
    };
    let b = |x: &Node| Box::new(fold(x));
    match &n.kind {
        NodeKind::Not(x) => match fold(x) {
            Node {
                kind: NodeKind::Bool(v),
                ..
            } => with(NodeKind::Bool(!v)),
            x => with(NodeKind::Not(Box::new(x))),
        },
        NodeKind::Neg(x) => match fold(x) {
            Node {
                kind: NodeKind::Num(v),
                ..
            } => with(NodeKind::Num(-v)),
            x => with(NodeKind::Neg(Box::new(x))),
        },
        NodeKind::And(l, r) => match (fold(l), fold(r)) {
            (
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
                _,
            )
            | (
                _,
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
            ) => with(NodeKind::Bool(false)),
            (
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
                x,
            )
            | (
                x,
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
            ) => x,
            (l, r) => with(NodeKind::And(Box::new(l), Box::new(r))),
        },
        NodeKind::Or(l, r) => match (fold(l), fold(r)) {
            (
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
                _,
            )
            | (
                _,
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
            ) => with(NodeKind::Bool(true)),
            (
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
                x,
            )
            | (
                x,
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
            ) => x,
            (l, r) => with(NodeKind::Or(Box::new(l), Box::new(r))),
        },
        NodeKind::Cmp { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Num(a), NodeKind::Num(x)) => with(NodeKind::Bool(op.num(*a, *x))),
                (NodeKind::Str(a), NodeKind::Str(x)) => with(NodeKind::Bool(op.same(a, x))),
                (NodeKind::Bool(a), NodeKind::Bool(x)) => with(NodeKind::Bool(op.same(a, x))),
                (NodeKind::Ip(a), NodeKind::Ip(x)) => with(NodeKind::Bool(op.same(a, x))),
                _ => with(NodeKind::Cmp {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::Arith { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Num(a), NodeKind::Num(x)) => with(NodeKind::Num(op.apply(*a, *x))),
                _ => with(NodeKind::Arith {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::StrOp { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Str(a), NodeKind::Str(x)) => with(NodeKind::Bool(op.apply(a, x))),
                _ => with(NodeKind::StrOp {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::In { expr, set, negated } => {
            let e = fold(expr);
            let member = match (&e.kind, set) {
                (NodeKind::Str(s), SetRef::Literal(v)) => Some(v.contains_str(s)),
                (NodeKind::Num(x), SetRef::Literal(v)) => Some(v.contains_num(*x)),
                (NodeKind::Ip(ip), SetRef::Literal(v)) => Some(v.contains_ip(*ip)),
                _ => None,
            };
            match member {
                Some(m) => with(NodeKind::Bool(m != *negated)),
                None => with(NodeKind::In {
                    expr: b(&e),
                    set: set.clone(),
                    negated: *negated,
                }),
            }
        }
        _ => n.clone(),
    }
}

// ---- closures ----

struct Compiler<'a> {
    program: &'a Program,
    lists: &'a [CompiledSet],
}

/// A number read without a call: a constant or one field of the context.
#[derive(Clone, Copy)]
enum NumLeaf {
    Const(f64),
    Amount,
    Field(Field),
    Feature(usize),
    Velocity(usize),
    Model(usize),
    Score,
}

impl NumLeaf {
    #[inline(always)]
    fn get(self, c: &Ctx) -> f64 {
        match self {
            NumLeaf::Const(x) => x,
            NumLeaf::Amount => c.amount,
            NumLeaf::Field(f) => f.num(c.event),
            NumLeaf::Feature(i) => c.event.features.get(i).map_or(0.0, |x| x.to_native()),
            NumLeaf::Velocity(i) => c.velocity[i],
            NumLeaf::Model(i) => c.models[i],
            NumLeaf::Score => c.score,
        }
    }
}

/// A string: a constant, a field or a declared attribute (with its default).
enum StrLeaf {
    Const(Box<str>),
    Field(Field),
    Attr { name: Box<str>, default: Box<str> },
}

impl StrLeaf {
    #[inline(always)]
    fn get<'s>(&'s self, e: &'s ArchivedEvent) -> &'s str {
        match self {
            StrLeaf::Const(s) => s,
            StrLeaf::Field(f) => f.str(e),
            StrLeaf::Attr { name, default } => match event::attribute(e, name) {
                Some(ArchivedAttrValue::Str(s)) => s.as_str(),
                _ => default,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum IpLeaf {
    Const(IpAddr),
    Field,
}

impl IpLeaf {
    #[inline(always)]
    fn get(self, e: &ArchivedEvent) -> IpAddr {
        match self {
            IpLeaf::Const(ip) => ip,
            IpLeaf::Field => event::ip(e),
        }
    }
}

impl Compiler<'_> {
    fn num_leaf(&self, n: &Node) -> Option<NumLeaf> {
        Some(match &n.kind {
            NodeKind::Num(x) => NumLeaf::Const(*x),
            NodeKind::Field(Field::Amount) => NumLeaf::Amount,
            NodeKind::Field(f) => NumLeaf::Field(*f),
            NodeKind::Feature(i) => NumLeaf::Feature(*i as usize),
            NodeKind::Velocity(i) => NumLeaf::Velocity(*i as usize),
            NodeKind::Model(i) => NumLeaf::Model(*i as usize),
            NodeKind::Score => NumLeaf::Score,
            _ => return None,
        })
    }

    fn str_leaf(&self, n: &Node) -> StrLeaf {
        match &n.kind {
            NodeKind::Str(s) => StrLeaf::Const(s.clone()),
            NodeKind::Field(f) => StrLeaf::Field(*f),
            NodeKind::Attr(i) => {
                let attr = &self.program.attributes[*i as usize];
                let AttrDefault::Str(default) = &attr.default else {
                    unreachable!("a string attribute has a string default")
                };
                StrLeaf::Attr {
                    name: attr.name.as_str().into(),
                    default: default.clone(),
                }
            }
            other => unreachable!("the checker types {other:?} as a string"),
        }
    }

    fn ip_leaf(&self, n: &Node) -> IpLeaf {
        match &n.kind {
            NodeKind::Ip(ip) => IpLeaf::Const(*ip),
            NodeKind::Field(Field::Ip) => IpLeaf::Field,
            other => unreachable!("the checker types {other:?} as an IP"),
        }
    }

    fn num(&self, n: &Node) -> NumFn {
        if let Some(leaf) = self.num_leaf(n) {
            return Box::new(move |c| leaf.get(c));
        }
        match &n.kind {
            NodeKind::Attr(i) => {
                let attr = &self.program.attributes[*i as usize];
                let name: Box<str> = attr.name.as_str().into();
                let AttrDefault::Num(default) = attr.default else {
                    unreachable!("a number attribute has a number default")
                };
                Box::new(move |c| match event::attribute(c.event, &name) {
                    Some(ArchivedAttrValue::Num(x)) => x.to_native(),
                    _ => default,
                })
            }
            NodeKind::Neg(x) => {
                let x = self.num(x);
                Box::new(move |c| -x(c))
            }
            NodeKind::Arith { op, lhs, rhs } => {
                let op = *op;
                match (self.num_leaf(lhs), self.num_leaf(rhs)) {
                    (Some(l), Some(r)) => Box::new(move |c| op.apply(l.get(c), r.get(c))),
                    _ => {
                        let (l, r) = (self.num(lhs), self.num(rhs));
                        Box::new(move |c| op.apply(l(c), r(c)))
                    }
                }
            }
            other => unreachable!("the checker types {other:?} as a number"),
        }
    }

    fn bool(&self, n: &Node) -> BoolFn {
        match &n.kind {
            NodeKind::Bool(b) => {
                let b = *b;
                Box::new(move |_| b)
            }
            NodeKind::Attr(i) => {
                let attr = &self.program.attributes[*i as usize];
                let name: Box<str> = attr.name.as_str().into();
                let AttrDefault::Bool(default) = attr.default else {
                    unreachable!("a bool attribute has a bool default")
                };
                Box::new(move |c| match event::attribute(c.event, &name) {
                    Some(ArchivedAttrValue::Bool(b)) => *b,
                    _ => default,
                })
            }
            NodeKind::Not(x) => {
                let x = self.bool(x);
                Box::new(move |c| !x(c))
            }
            NodeKind::And(l, r) => {
                let (l, r) = (self.bool(l), self.bool(r));
                Box::new(move |c| l(c) && r(c))
            }
            NodeKind::Or(l, r) => {
                let (l, r) = (self.bool(l), self.bool(r));
                Box::new(move |c| l(c) || r(c))
            }
            NodeKind::Cmp { op, lhs, rhs } => self.cmp(*op, lhs, rhs),
            NodeKind::StrOp { op, lhs, rhs } => {
                let (op, l, r) = (*op, self.str_leaf(lhs), self.str_leaf(rhs));
                Box::new(move |c| op.apply(l.get(c.event), r.get(c.event)))
            }
            NodeKind::In { expr, set, negated } => self.membership(expr, set, *negated),
            other => unreachable!("the checker types {other:?} as true/false"),
        }
    }

    fn cmp(&self, op: CmpOp, lhs: &Node, rhs: &Node) -> BoolFn {
        match lhs.ty {
            Ty::Num => match (self.num_leaf(lhs), self.num_leaf(rhs)) {
                // The common shape, `field OP constant`, specialised per operator.
                (Some(l), Some(NumLeaf::Const(k))) => match op {
                    CmpOp::Eq => Box::new(move |c| l.get(c) == k),
                    CmpOp::Ne => Box::new(move |c| l.get(c) != k),
                    CmpOp::Lt => Box::new(move |c| l.get(c) < k),
                    CmpOp::Le => Box::new(move |c| l.get(c) <= k),
                    CmpOp::Gt => Box::new(move |c| l.get(c) > k),
                    CmpOp::Ge => Box::new(move |c| l.get(c) >= k),
                },
                (Some(l), Some(r)) => Box::new(move |c| op.num(l.get(c), r.get(c))),
                _ => {
                    let (l, r) = (self.num(lhs), self.num(rhs));
                    Box::new(move |c| op.num(l(c), r(c)))
                }
            },
            Ty::Str => {
                let (l, r) = (self.str_leaf(lhs), self.str_leaf(rhs));
                let ne = op == CmpOp::Ne;
                Box::new(move |c| {
                    bytes_eq(l.get(c.event).as_bytes(), r.get(c.event).as_bytes()) != ne
                })
            }
            Ty::Ip => {
                let (l, r) = (self.ip_leaf(lhs), self.ip_leaf(rhs));
                Box::new(move |c| op.same(&l.get(c.event), &r.get(c.event)))
            }
            Ty::Bool => {
                let (l, r) = (self.bool(lhs), self.bool(rhs));
                Box::new(move |c| op.same(&l(c), &r(c)))
            }
        }
    }

    fn membership(&self, expr: &Node, set: &SetRef, negated: bool) -> BoolFn {
        let owned;
        let set: &CompiledSet = match set {
            SetRef::List(i) => &self.lists[*i as usize],
            SetRef::Literal(values) => {
                owned = CompiledSet::new(values);
                &owned
            }
        };
        let set = set.clone();
        match expr.ty {
            Ty::Str => {
                let leaf = self.str_leaf(expr);
                Box::new(move |c| set.has_str(leaf.get(c.event)) != negated)
            }
            Ty::Ip => {
                let leaf = self.ip_leaf(expr);
                Box::new(move |c| set.has_ip(leaf.get(c.event)) != negated)
            }
            _ => match self.num_leaf(expr) {
                Some(leaf) => Box::new(move |c| set.has_num(leaf.get(c)) != negated),
                None => {
                    let x = self.num(expr);
                    Box::new(move |c| set.has_num(x(c)) != negated)
                }
            },
        }
    }

    /// A value's hash for `distinct`.
    fn hash(&self, n: &Node) -> HashFn {
        use std::hash::BuildHasher;
        match n.ty {
            Ty::Str => {
                let leaf = self.str_leaf(n);
                Box::new(move |c, h| h.hash_one(leaf.get(c.event)))
            }
            Ty::Ip => {
                let leaf = self.ip_leaf(n);
                Box::new(move |c, h| h.hash_one(leaf.get(c.event)))
            }
            _ => {
                let x = self.num(n);
                Box::new(move |c, h| h.hash_one(canonical_bits(x(c))))
            }
        }
    }
}

/// Bits of a number for hashing and set membership: `-0.0` is `0.0`.
fn canonical_bits(x: f64) -> u64 {
    if x == 0.0 { 0 } else { x.to_bits() }
}

/// Sets up to this many members are scanned; larger ones are hashed.
const SCAN_MEMBERS_MAX: usize = 8;

type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// A set compiled for membership tests. Shared (`Arc`) between the closures that use it.
#[derive(Clone)]
enum CompiledSet {
    Str(Arc<StrSet>),
    NumScan(Arc<[f64]>),
    NumHash(Arc<FastSet<u64>>),
    Ip(Arc<IpSet>),
}

/// Strings of up to 15 bytes are packed with their length into one `u128`, so testing a
/// short code (`country in [...]`) is integer compares, not `memcmp` calls.
struct StrSet {
    packed: Vec<u128>,
    long: Vec<Box<str>>,
    /// Every member, hashed, when the set is large.
    hashed: Option<FastSet<Box<str>>>,
}

#[inline(always)]
fn pack(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() > 15 {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..b.len()].copy_from_slice(b);
    bytes[15] = b.len() as u8;
    Some(u128::from_le_bytes(bytes))
}

impl StrSet {
    fn new(members: &[Box<str>]) -> StrSet {
        if members.len() > SCAN_MEMBERS_MAX {
            return StrSet {
                packed: Vec::new(),
                long: Vec::new(),
                hashed: Some(members.iter().cloned().collect()),
            };
        }
        let (mut packed, mut long) = (Vec::new(), Vec::new());
        for m in members {
            match pack(m) {
                Some(p) => packed.push(p),
                None => long.push(m.clone()),
            }
        }
        StrSet {
            packed,
            long,
            hashed: None,
        }
    }

    #[inline]
    fn contains(&self, s: &str) -> bool {
        if let Some(h) = &self.hashed {
            return h.contains(s);
        }
        match pack(s) {
            Some(p) => self.packed.contains(&p),
            None => self.long.iter().any(|m| &**m == s),
        }
    }
}

impl CompiledSet {
    fn new(values: &SetValues) -> CompiledSet {
        match values {
            SetValues::Str(v) => CompiledSet::Str(Arc::new(StrSet::new(v))),
            SetValues::Num(v) if v.len() <= SCAN_MEMBERS_MAX => {
                CompiledSet::NumScan(v.clone().into())
            }
            SetValues::Num(v) => {
                CompiledSet::NumHash(Arc::new(v.iter().map(|x| canonical_bits(*x)).collect()))
            }
            SetValues::Ip(nets) => CompiledSet::Ip(Arc::new(IpSet::new(nets))),
        }
    }

    #[inline]
    fn has_str(&self, s: &str) -> bool {
        match self {
            CompiledSet::Str(set) => set.contains(s),
            _ => false,
        }
    }

    #[inline]
    fn has_num(&self, x: f64) -> bool {
        match self {
            CompiledSet::NumScan(v) => v.contains(&x),
            CompiledSet::NumHash(h) => !x.is_nan() && h.contains(&canonical_bits(x)),
            _ => false,
        }
    }

    #[inline]
    fn has_ip(&self, ip: IpAddr) -> bool {
        match self {
            CompiledSet::Ip(set) => set.contains(ip),
            _ => false,
        }
    }
}

/// IP networks: a few are scanned (one mask and compare each); many are grouped by prefix
/// length, one hash lookup per distinct length.
enum IpSet {
    Scan(Vec<(bool, u8, u128)>),
    Hashed {
        v4: Vec<(u8, FastSet<u128>)>,
        v6: Vec<(u8, FastSet<u128>)>,
    },
}

impl IpSet {
    fn new(nets: &[IpNet]) -> IpSet {
        let masked =
            |net: &IpNet| event::mask(event::addr_bits(net.addr), net.addr.is_ipv4(), net.prefix);
        if nets.len() <= SCAN_MEMBERS_MAX {
            return IpSet::Scan(
                nets.iter()
                    .map(|n| (n.addr.is_ipv4(), n.prefix, masked(n)))
                    .collect(),
            );
        }
        type Tables = Vec<(u8, FastSet<u128>)>;
        let (mut v4, mut v6): (Tables, Tables) = (Vec::new(), Vec::new());
        for net in nets {
            let table = if net.addr.is_ipv4() { &mut v4 } else { &mut v6 };
            match table.iter_mut().find(|(p, _)| *p == net.prefix) {
                Some((_, h)) => {
                    h.insert(masked(net));
                }
                None => {
                    let mut h = FastSet::default();
                    h.insert(masked(net));
                    table.push((net.prefix, h));
                }
            }
        }
        v4.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        v6.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        IpSet::Hashed { v4, v6 }
    }

    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        let v4 = ip.is_ipv4();
        let bits = event::addr_bits(ip);
        match self {
            IpSet::Scan(nets) => nets
                .iter()
                .any(|&(is_v4, prefix, net)| is_v4 == v4 && event::mask(bits, v4, prefix) == net),
            IpSet::Hashed { v4: t4, v6: t6 } => {
                let table = if v4 { t4 } else { t6 };
                table
                    .iter()
                    .any(|(prefix, h)| h.contains(&event::mask(bits, v4, *prefix)))
            }
        }
    }
}
