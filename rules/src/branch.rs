//! Conditions as branch programs over a per-event register file.
//!
//! Every number a rule can read (`amount`, `mcc`, `hour`, a velocity value, a model score, a
//! number or bool attribute, `features[i]`, the score) gets a *register*: a slot of one
//! `f64` array filled once per event ([`Layout::load`]). A condition compiles to *jumping
//! code*: a flat run of [`Op`]s, each one test with a jump for true and one for false.
//! `and`, `or` and `not` are not operations at all; they only choose the jumps, so
//! `a and not b` evaluates `a`, then `b`, short-circuiting as written, with no call per
//! node. The common tests (`register OP constant`, a string in a packed set, an address in
//! a network list) are inline [`Test`] variants; anything rarer (arithmetic, string
//! attributes, `contains`) is one boxed closure that still reads registers.
//!
//! Every rule's ops sit back to back in one array, in the order they run.

use std::net::IpAddr;
use std::sync::Arc;

use verdict_net::{ArchivedAttrValue, ArchivedEvent};

use crate::atoms::{Collector, Leaf, Lit, SetId};
use crate::event::{self, Field, Ty};
use crate::ir::*;
use crate::sets::{CompiledSet, IpSet, StrSet, canonical_bits, pack};

/// A condition in disjunctive normal form: any of the conjunctions, each all of its
/// literals.
pub(crate) type Dnf = Vec<Vec<Lit>>;

/// Conjunctions a condition may expand to and still be evaluated as masks; past this it
/// runs as a branch program.
const CONJUNCTIONS_MAX: usize = 8;

/// Fixed registers; the rest are laid out per rule set by [`Layout`].
pub(crate) const AMOUNT: u32 = 0;
const AMOUNT_MINOR: u32 = 1;
const MCC: u32 = 2;
const HOUR: u32 = 3;
const TIMESTAMP: u32 = 4;
pub(crate) const SCORE: u32 = 5;
const FIXED: u32 = 6;

/// Jump targets past the last op: the condition's answer.
pub(crate) const TRUE: u32 = u32::MAX;
pub(crate) const FALSE: u32 = u32::MAX - 1;

/// What a test sees of one event.
pub(crate) struct Ctx<'a> {
    pub event: &'a ArchivedEvent,
    /// The register file, laid out by [`Layout`].
    pub regs: &'a [f64],
    /// The event's IP (canonical) as [`event::addr_bits`], and whether it is IPv4.
    pub ip: u128,
    pub ip_v4: bool,
    /// The atoms' bits (empty while the atoms themselves are evaluated).
    pub bits: &'a [u64],
}

impl<'a> Ctx<'a> {
    pub fn new(event: &'a ArchivedEvent, regs: &'a [f64]) -> Ctx<'a> {
        let (ip, ip_v4) = Ctx::ip_of(event);
        Ctx {
            event,
            regs,
            ip,
            ip_v4,
            bits: &[],
        }
    }

    /// The event's IP as `(bits, is IPv4)`.
    #[inline]
    pub fn ip_of(event: &ArchivedEvent) -> (u128, bool) {
        let ip = event::ip(event);
        (event::addr_bits(ip), ip.is_ipv4())
    }

    #[inline(always)]
    fn reg(&self, r: u32) -> f64 {
        self.regs[r as usize]
    }
}

/// A declared number or bool attribute read into a register (bools as 0 / 1).
struct AttrReg {
    name: Box<str>,
    default: f64,
    bool: bool,
    reg: u32,
}

/// Which register holds what, for one rule set.
pub(crate) struct Layout {
    /// The first velocity register: function `i` is `velocity + i`.
    pub velocity: u32,
    velocity_count: u32,
    models: u32,
    model_count: u32,
    attrs: Vec<AttrReg>,
    /// `(feature index, register)`.
    features: Vec<(u32, u32)>,
    len: u32,
}

impl Layout {
    fn new(program: &Program) -> Layout {
        let velocity_count = program.velocity.len() as u32;
        let model_count = program.models.len() as u32;
        Layout {
            velocity: FIXED,
            velocity_count,
            models: FIXED + velocity_count,
            model_count,
            attrs: Vec::new(),
            features: Vec::new(),
            len: FIXED + velocity_count + model_count,
        }
    }

    fn attr(&mut self, program: &Program, index: u32) -> u32 {
        let attr = &program.attributes[index as usize];
        if let Some(a) = self.attrs.iter().find(|a| *a.name == *attr.name) {
            return a.reg;
        }
        let (default, bool) = match attr.default {
            AttrDefault::Num(x) => (x, false),
            AttrDefault::Bool(b) => (f64::from(u8::from(b)), true),
            AttrDefault::Str(_) => unreachable!("string attributes are read, not loaded"),
        };
        let reg = self.push();
        self.attrs.push(AttrReg {
            name: attr.name.as_str().into(),
            default,
            bool,
            reg,
        });
        reg
    }

    fn feature(&mut self, index: u32) -> u32 {
        if let Some(&(_, reg)) = self.features.iter().find(|(i, _)| *i == index) {
            return reg;
        }
        let reg = self.push();
        self.features.push((index, reg));
        reg
    }

    fn push(&mut self) -> u32 {
        self.len += 1;
        self.len - 1
    }

    /// Fills the registers for `e`, all but velocity and the score: the caller records
    /// velocity (which reads the other registers), then runs the rules, then sets the score.
    /// Model scores are set later ([`Layout::set_models`]): features are computed from these
    /// registers before the models run. Allocates only the first time `regs` is used for this
    /// layout's size.
    pub fn load(&self, e: &ArchivedEvent, regs: &mut Vec<f64>) {
        regs.clear();
        regs.resize(self.len as usize, 0.0);
        regs[AMOUNT as usize] = event::amount(e);
        regs[AMOUNT_MINOR as usize] = Field::AmountMinor.num(e);
        regs[MCC as usize] = Field::Mcc.num(e);
        regs[HOUR as usize] = event::hour(e);
        regs[TIMESTAMP as usize] = Field::TimestampMs.num(e);
        for a in &self.attrs {
            regs[a.reg as usize] = match (event::attribute(e, &a.name), a.bool) {
                (Some(ArchivedAttrValue::Num(x)), false) => x.to_native(),
                (Some(ArchivedAttrValue::Bool(b)), true) => f64::from(u8::from(*b)),
                _ => a.default,
            };
        }
        for &(i, reg) in &self.features {
            regs[reg as usize] = e.features.get(i as usize).map_or(0.0, |x| x.to_native());
        }
    }

    /// Puts the event's model scores in their registers (missing ones stay 0).
    pub fn set_models(&self, models: &[f64], regs: &mut [f64]) {
        let n = models.len().min(self.model_count as usize);
        let m = self.models as usize;
        regs[m..m + n].copy_from_slice(&models[..n]);
    }

    /// The velocity values in `regs`.
    pub fn velocity<'r>(&self, regs: &'r [f64]) -> &'r [f64] {
        let v = self.velocity as usize;
        &regs[v..v + self.velocity_count as usize]
    }
}

pub(crate) type NumFn = Box<dyn Fn(&Ctx) -> f64 + Send + Sync>;
pub(crate) type BoolFn = Box<dyn Fn(&Ctx) -> bool + Send + Sync>;
pub(crate) type HashFn =
    Box<dyn Fn(&Ctx, &foldhash::fast::SeedableRandomState) -> u64 + Send + Sync>;

/// One test. Registers are `u32` indexes into [`Ctx::regs`].
pub(crate) enum Test {
    Const(bool),
    /// An atom's bit (see [`crate::atoms`]).
    Atom(u32),
    Truthy(u32),
    Gt(u32, f64),
    Ge(u32, f64),
    Lt(u32, f64),
    Le(u32, f64),
    Eq(u32, f64),
    Ne(u32, f64),
    /// `register OP register`.
    Cmp(u32, CmpOp, u32),
    /// `(register ARITH c) OP k`, or `(c ARITH register) OP k` when `c_first`.
    Arith {
        reg: u32,
        arith: ArithOp,
        c: f64,
        c_first: bool,
        op: CmpOp,
        k: f64,
    },
    /// A string field equals (or not, `ne`) a constant of up to 15 bytes, packed.
    StrEq {
        field: Field,
        packed: [u64; 2],
        ne: bool,
    },
    StrIn {
        field: Field,
        set: Arc<StrSet>,
        negated: bool,
    },
    /// A string field starts with, ends with or contains a constant.
    StrOp {
        field: Field,
        op: StrOp,
        k: Box<str>,
    },
    NumIn {
        reg: u32,
        set: CompiledSet,
        negated: bool,
    },
    IpIn {
        set: Arc<IpSet>,
        negated: bool,
    },
    /// Two true/false conditions (their entry ops) compared with `==` (or `!=`, `ne`).
    BoolEq {
        a: u32,
        b: u32,
        ne: bool,
    },
    Call(BoolFn),
}

impl Test {
    /// Tests of one kind sort together.
    pub fn rank(&self) -> u8 {
        match self {
            Test::Const(_) => 0,
            Test::Atom(_) => 1,
            Test::Truthy(_) => 2,
            Test::Gt(..) => 3,
            Test::Ge(..) => 4,
            Test::Lt(..) => 5,
            Test::Le(..) => 6,
            Test::Eq(..) => 7,
            Test::Ne(..) => 8,
            Test::Cmp(..) => 9,
            Test::Arith { .. } => 17,
            Test::StrEq { .. } => 10,
            Test::StrIn { .. } => 11,
            Test::StrOp { .. } => 12,
            Test::NumIn { .. } => 13,
            Test::IpIn { .. } => 14,
            Test::BoolEq { .. } => 15,
            Test::Call(_) => 16,
        }
    }
}

/// A test and where to go next.
pub(crate) struct Op {
    test: Test,
    on_true: u32,
    on_false: u32,
}

#[inline(always)]
fn packed(s: &str) -> [u64; 2] {
    match pack(s) {
        Some(p) => [p as u64, (p >> 64) as u64],
        // Never equal to a packed constant: the length byte of a packed string is < 16.
        None => [u64::MAX; 2],
    }
}

/// Runs the condition entered at `pc` to its answer.
#[inline]
pub(crate) fn run(ops: &[Op], mut pc: u32, c: &Ctx) -> bool {
    while pc < FALSE {
        let op = &ops[pc as usize];
        pc = if test(ops, &op.test, c) {
            op.on_true
        } else {
            op.on_false
        };
    }
    pc == TRUE
}

#[inline(always)]
pub(crate) fn test(ops: &[Op], t: &Test, c: &Ctx) -> bool {
    match t {
        Test::Const(b) => *b,
        Test::Atom(id) => c.bits[(id / 64) as usize] >> (id % 64) & 1 != 0,
        Test::Truthy(r) => c.reg(*r) != 0.0,
        Test::Gt(r, k) => c.reg(*r) > *k,
        Test::Ge(r, k) => c.reg(*r) >= *k,
        Test::Lt(r, k) => c.reg(*r) < *k,
        Test::Le(r, k) => c.reg(*r) <= *k,
        Test::Eq(r, k) => c.reg(*r) == *k,
        Test::Ne(r, k) => c.reg(*r) != *k,
        Test::Cmp(a, op, b) => op.num(c.reg(*a), c.reg(*b)),
        Test::Arith {
            reg,
            arith,
            c: k2,
            c_first,
            op,
            k,
        } => {
            let x = c.reg(*reg);
            let v = if *c_first {
                arith.apply(*k2, x)
            } else {
                arith.apply(x, *k2)
            };
            op.num(v, *k)
        }
        Test::StrEq {
            field,
            packed: k,
            ne,
        } => (packed(field.str(c.event)) == *k) != *ne,
        Test::StrIn {
            field,
            set,
            negated,
        } => set.contains(field.str(c.event)) != *negated,
        Test::StrOp { field, op, k } => op.apply(field.str(c.event), k),
        Test::NumIn { reg, set, negated } => set.has_num(c.reg(*reg)) != *negated,
        Test::IpIn { set, negated } => set.contains(c.ip, c.ip_v4) != *negated,
        Test::BoolEq { a, b, ne } => (run(ops, *a, c) == run(ops, *b, c)) != *ne,
        Test::Call(f) => f(c),
    }
}

/// A number read without a call: a constant or a register.
#[derive(Clone, Copy)]
enum NumLeaf {
    Const(f64),
    Reg(u32),
}

impl NumLeaf {
    #[inline(always)]
    fn get(self, c: &Ctx) -> f64 {
        match self {
            NumLeaf::Const(x) => x,
            NumLeaf::Reg(r) => c.reg(r),
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
    Const(u128, bool),
    Field,
}

impl IpLeaf {
    #[inline(always)]
    fn get(self, c: &Ctx) -> (u128, bool) {
        match self {
            IpLeaf::Const(bits, v4) => (bits, v4),
            IpLeaf::Field => (c.ip, c.ip_v4),
        }
    }
}

fn ip_const(ip: IpAddr) -> IpLeaf {
    let ip = ip.to_canonical();
    IpLeaf::Const(event::addr_bits(ip), ip.is_ipv4())
}

/// Builds the ops of a rule set, and its register layout as conditions ask for registers.
pub(crate) struct Builder<'a> {
    program: &'a Program,
    lists: Vec<CompiledSet>,
    pub ops: Vec<Op>,
    pub layout: Layout,
    pub atoms: Collector,
    /// Whether leaves become atoms (rules) or tests of their own (policy arms, which read
    /// the score, known only after the rules).
    pub atomize: bool,
}

impl<'a> Builder<'a> {
    pub fn new(program: &'a Program) -> Builder<'a> {
        Builder {
            program,
            lists: program
                .lists
                .iter()
                .map(|l| CompiledSet::new(&l.values))
                .collect(),
            ops: Vec::new(),
            layout: Layout::new(program),
            atoms: Collector::default(),
            atomize: false,
        }
    }

    /// Renumbers the atoms the ops test, once their final ids are known.
    pub fn remap_atoms(&mut self, remap: &[u32]) {
        for op in &mut self.ops {
            if let Test::Atom(id) = &mut op.test {
                *id = remap[*id as usize];
            }
        }
    }

    /// How many conjunctions `n` (negated if `neg`) expands to, if it can be evaluated as
    /// masks at all (a comparison of two conditions cannot).
    pub fn dnf_size(&self, n: &Node, neg: bool) -> Option<usize> {
        let size = match &n.kind {
            NodeKind::Bool(b) => usize::from(*b != neg),
            NodeKind::Not(x) => self.dnf_size(x, !neg)?,
            NodeKind::And(l, r) | NodeKind::Or(l, r) => {
                let all = matches!(n.kind, NodeKind::And(..)) != neg;
                let (l, r) = (self.dnf_size(l, neg)?, self.dnf_size(r, neg)?);
                if all { l * r } else { l + r }
            }
            NodeKind::Cmp { lhs, .. } if lhs.ty == Ty::Bool => return None,
            _ => 1,
        };
        (size <= CONJUNCTIONS_MAX).then_some(size)
    }

    /// `n` (negated if `neg`) in disjunctive normal form over atoms. Check
    /// [`dnf_size`](Self::dnf_size) first.
    pub fn dnf(&mut self, n: &Node, neg: bool) -> Dnf {
        match &n.kind {
            NodeKind::Bool(b) => constant_dnf(*b != neg),
            NodeKind::Not(x) => self.dnf(x, !neg),
            NodeKind::And(l, r) | NodeKind::Or(l, r) => {
                let all = matches!(n.kind, NodeKind::And(..)) != neg;
                let (l, r) = (self.dnf(l, neg), self.dnf(r, neg));
                if all {
                    l.iter()
                        .flat_map(|a| r.iter().map(move |b| [a.as_slice(), b].concat()))
                        .collect()
                } else {
                    [l, r].concat()
                }
            }
            _ => {
                let leaf = self.leaf(n);
                match self.atoms.lit(leaf) {
                    Err(b) => constant_dnf(b != neg),
                    Ok(lit) => vec![vec![Lit {
                        atom: lit.atom,
                        negated: lit.negated != neg,
                    }]],
                }
            }
        }
    }

    /// A leaf test, classified for grouping.
    fn leaf(&mut self, n: &Node) -> Leaf {
        match &n.kind {
            NodeKind::Cmp { op, lhs, rhs } if lhs.ty == Ty::Num => {
                match (self.num_leaf(lhs), self.num_leaf(rhs)) {
                    (Some(NumLeaf::Reg(reg)), Some(NumLeaf::Const(k))) => {
                        Leaf::Num { reg, op: *op, k }
                    }
                    (Some(NumLeaf::Const(k)), Some(NumLeaf::Reg(reg))) => Leaf::Num {
                        reg,
                        op: mirror(*op),
                        k,
                    },
                    _ => Leaf::Other(self.cmp(*op, lhs, rhs)),
                }
            }
            NodeKind::Cmp { op, lhs, rhs } if lhs.ty == Ty::Str => {
                match (self.str_leaf(lhs), self.str_leaf(rhs)) {
                    (StrLeaf::Field(field), StrLeaf::Const(k))
                    | (StrLeaf::Const(k), StrLeaf::Field(field)) => Leaf::Str {
                        field,
                        set: SetId::Members(vec![format!("s{k}")]),
                        members: vec![k],
                        negated: *op == CmpOp::Ne,
                    },
                    _ => Leaf::Other(self.cmp(*op, lhs, rhs)),
                }
            }
            NodeKind::StrOp { op, lhs, rhs } if *op != StrOp::Contains => {
                match (&lhs.kind, &rhs.kind) {
                    (NodeKind::Field(field), NodeKind::Str(k))
                        if lhs.ty == Ty::Str && (1..=15).contains(&k.len()) =>
                    {
                        Leaf::Affix {
                            field: *field,
                            op: *op,
                            k: k.clone(),
                        }
                    }
                    _ => Leaf::Other(self.test(n)),
                }
            }
            NodeKind::In { expr, set, negated } => {
                let negated = *negated;
                let (id, values) = match set {
                    SetRef::List(i) => (SetId::List(*i), &self.program.lists[*i as usize].values),
                    SetRef::Literal(v) => (SetId::Members(literal_id(v)), v),
                };
                match (&expr.kind, values) {
                    (NodeKind::Field(field), SetValues::Str(members)) if expr.ty == Ty::Str => {
                        Leaf::Str {
                            field: *field,
                            set: id,
                            members: members.clone(),
                            negated,
                        }
                    }
                    (NodeKind::Field(Field::Ip), SetValues::Ip(nets)) => Leaf::Ip {
                        set: id,
                        nets: nets.clone(),
                        negated,
                    },
                    (_, SetValues::Num(members)) if expr.ty == Ty::Num => {
                        match self.num_leaf(expr) {
                            Some(NumLeaf::Reg(reg)) => Leaf::NumSet {
                                reg,
                                set: id,
                                members: members.clone(),
                                negated,
                            },
                            _ => Leaf::Other(self.membership(expr, set, negated)),
                        }
                    }
                    _ => Leaf::Other(self.membership(expr, set, negated)),
                }
            }
            _ => Leaf::Other(self.test(n)),
        }
    }

    /// Compiles a (folded) condition; returns where it is entered, an op or (for a constant
    /// condition) [`TRUE`] / [`FALSE`]. Its ops are appended in the order they run.
    pub fn condition(&mut self, n: &Node) -> u32 {
        let start = self.ops.len() as u32;
        // Emitted back to front (a jump's target exists before the jump), then reversed.
        let entry = self.emit(n, TRUE, FALSE);
        let end = self.ops.len() as u32;
        let flip = |pc: u32| {
            if (start..end).contains(&pc) {
                start + end - 1 - pc
            } else {
                pc
            }
        };
        self.ops[start as usize..].reverse();
        for op in &mut self.ops[start as usize..] {
            op.on_true = flip(op.on_true);
            op.on_false = flip(op.on_false);
            if let Test::BoolEq { a, b, .. } = &mut op.test {
                *a = flip(*a);
                *b = flip(*b);
            }
        }
        flip(entry)
    }

    /// Emits `n` so that it jumps to `t` when true and `f` when false; returns its entry.
    fn emit(&mut self, n: &Node, t: u32, f: u32) -> u32 {
        match &n.kind {
            NodeKind::Bool(b) => {
                if *b {
                    t
                } else {
                    f
                }
            }
            NodeKind::Not(x) => self.emit(x, f, t),
            NodeKind::And(l, r) => {
                let r = self.emit(r, t, f);
                self.emit(l, r, f)
            }
            NodeKind::Or(l, r) => {
                let r = self.emit(r, t, f);
                self.emit(l, t, r)
            }
            NodeKind::Cmp { op, lhs, rhs } if lhs.ty == Ty::Bool => {
                // Each side is its own small condition, run by the test.
                let a = self.emit(lhs, TRUE, FALSE);
                let b = self.emit(rhs, TRUE, FALSE);
                let test = Test::BoolEq {
                    a,
                    b,
                    ne: *op == CmpOp::Ne,
                };
                self.op(test, t, f)
            }
            _ if self.atomize => {
                let leaf = self.leaf(n);
                match self.atoms.lit(leaf) {
                    Err(b) => {
                        if b {
                            t
                        } else {
                            f
                        }
                    }
                    Ok(Lit { atom, negated }) => {
                        let (t, f) = if negated { (f, t) } else { (t, f) };
                        self.op(Test::Atom(atom.0), t, f)
                    }
                }
            }
            _ => {
                let test = self.test(n);
                self.op(test, t, f)
            }
        }
    }

    fn op(&mut self, test: Test, on_true: u32, on_false: u32) -> u32 {
        self.ops.push(Op {
            test,
            on_true,
            on_false,
        });
        self.ops.len() as u32 - 1
    }

    fn test(&mut self, n: &Node) -> Test {
        match &n.kind {
            NodeKind::Attr(i) => Test::Truthy(self.layout.attr(self.program, *i)),
            NodeKind::Cmp { op, lhs, rhs } => self.cmp(*op, lhs, rhs),
            NodeKind::StrOp { op, lhs, rhs } => match (self.str_leaf(lhs), self.str_leaf(rhs)) {
                (StrLeaf::Field(field), StrLeaf::Const(k)) => Test::StrOp { field, op: *op, k },
                (l, r) => {
                    let op = *op;
                    Test::Call(Box::new(move |c| op.apply(l.get(c.event), r.get(c.event))))
                }
            },
            NodeKind::In { expr, set, negated } => self.membership(expr, set, *negated),
            other => unreachable!("the checker types {other:?} as true/false"),
        }
    }

    fn num_leaf(&mut self, n: &Node) -> Option<NumLeaf> {
        let reg = match &n.kind {
            NodeKind::Num(x) => return Some(NumLeaf::Const(*x)),
            NodeKind::Field(f) => match f {
                Field::Amount => AMOUNT,
                Field::AmountMinor => AMOUNT_MINOR,
                Field::Mcc => MCC,
                Field::Hour => HOUR,
                Field::TimestampMs => TIMESTAMP,
                other => unreachable!("the checker types {other:?} as a number"),
            },
            NodeKind::Feature(i) => self.layout.feature(*i),
            NodeKind::Velocity(i) => self.layout.velocity + i,
            NodeKind::Model(i) => self.layout.models + i,
            NodeKind::Score => SCORE,
            NodeKind::Attr(i) => self.layout.attr(self.program, *i),
            _ => return None,
        };
        Some(NumLeaf::Reg(reg))
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
            NodeKind::Ip(ip) => ip_const(*ip),
            NodeKind::Field(Field::Ip) => IpLeaf::Field,
            other => unreachable!("the checker types {other:?} as an IP"),
        }
    }

    /// A number expression as a closure (arithmetic and negation; leaves read registers).
    pub fn num(&mut self, n: &Node) -> NumFn {
        if let Some(leaf) = self.num_leaf(n) {
            return Box::new(move |c| leaf.get(c));
        }
        match &n.kind {
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

    fn cmp(&mut self, op: CmpOp, lhs: &Node, rhs: &Node) -> Test {
        match lhs.ty {
            Ty::Num => match (self.num_leaf(lhs), self.num_leaf(rhs)) {
                (Some(NumLeaf::Reg(r)), Some(NumLeaf::Const(k))) => reg_const(r, op, k),
                (Some(NumLeaf::Const(k)), Some(NumLeaf::Reg(r))) => reg_const(r, mirror(op), k),
                (Some(NumLeaf::Reg(a)), Some(NumLeaf::Reg(b))) => Test::Cmp(a, op, b),
                (None, Some(NumLeaf::Const(k))) if let Some(t) = self.arith(lhs, op, k) => t,
                _ => {
                    let (l, r) = (self.num(lhs), self.num(rhs));
                    Test::Call(Box::new(move |c| op.num(l(c), r(c))))
                }
            },
            Ty::Str => {
                let ne = op == CmpOp::Ne;
                match (self.str_leaf(lhs), self.str_leaf(rhs)) {
                    (StrLeaf::Field(field), StrLeaf::Const(k))
                    | (StrLeaf::Const(k), StrLeaf::Field(field))
                        if pack(&k).is_some() =>
                    {
                        Test::StrEq {
                            field,
                            packed: packed(&k),
                            ne,
                        }
                    }
                    (l, r) => Test::Call(Box::new(move |c| {
                        bytes_eq(l.get(c.event).as_bytes(), r.get(c.event).as_bytes()) != ne
                    })),
                }
            }
            Ty::Ip => {
                let (l, r) = (self.ip_leaf(lhs), self.ip_leaf(rhs));
                Test::Call(Box::new(move |c| op.same(&l.get(c), &r.get(c))))
            }
            Ty::Bool => unreachable!("emitted as two conditions"),
        }
    }

    /// `(register ARITH c) OP k` as one test, if `lhs` has that shape.
    fn arith(&mut self, lhs: &Node, op: CmpOp, k: f64) -> Option<Test> {
        let NodeKind::Arith {
            op: arith,
            lhs: a,
            rhs: b,
        } = &lhs.kind
        else {
            return None;
        };
        let (reg, c, c_first) = match (self.num_leaf(a)?, self.num_leaf(b)?) {
            (NumLeaf::Reg(reg), NumLeaf::Const(c)) => (reg, c, false),
            (NumLeaf::Const(c), NumLeaf::Reg(reg)) => (reg, c, true),
            _ => return None,
        };
        Some(Test::Arith {
            reg,
            arith: *arith,
            c,
            c_first,
            op,
            k,
        })
    }

    fn membership(&mut self, expr: &Node, set: &SetRef, negated: bool) -> Test {
        let set = match set {
            SetRef::List(i) => self.lists[*i as usize].clone(),
            SetRef::Literal(values) => CompiledSet::new(values),
        };
        match (expr.ty, set) {
            (Ty::Str, CompiledSet::Str(set)) => match self.str_leaf(expr) {
                StrLeaf::Field(field) => Test::StrIn {
                    field,
                    set,
                    negated,
                },
                leaf => Test::Call(Box::new(move |c| {
                    set.contains(leaf.get(c.event)) != negated
                })),
            },
            (Ty::Ip, CompiledSet::Ip(set)) => match self.ip_leaf(expr) {
                IpLeaf::Field => Test::IpIn { set, negated },
                // Folded unless the set is a named list; still constant.
                IpLeaf::Const(bits, v4) => Test::Const(set.contains(bits, v4) != negated),
            },
            (Ty::Num, set @ (CompiledSet::NumScan(_) | CompiledSet::NumHash(_))) => {
                match self.num_leaf(expr) {
                    Some(NumLeaf::Reg(reg)) => Test::NumIn { reg, set, negated },
                    _ => {
                        let x = self.num(expr);
                        Test::Call(Box::new(move |c| set.has_num(x(c)) != negated))
                    }
                }
            }
            // A set of another type (an empty list typed by an earlier use) holds nothing.
            _ => Test::Const(negated),
        }
    }

    /// A value's hash for `distinct`.
    pub fn hash(&mut self, n: &Node) -> HashFn {
        use std::hash::BuildHasher;
        match n.ty {
            Ty::Str => {
                let leaf = self.str_leaf(n);
                Box::new(move |c, h| h.hash_one(leaf.get(c.event)))
            }
            Ty::Ip => {
                let leaf = self.ip_leaf(n);
                Box::new(move |c, h| h.hash_one(leaf.get(c)))
            }
            _ => {
                let x = self.num(n);
                Box::new(move |c, h| h.hash_one(canonical_bits(x(c))))
            }
        }
    }
}

fn constant_dnf(b: bool) -> Dnf {
    if b { vec![Vec::new()] } else { Vec::new() }
}

/// A literal set's identity: its members as text, sorted.
fn literal_id(values: &SetValues) -> Vec<String> {
    let mut id: Vec<String> = match values {
        SetValues::Str(v) => v.iter().map(|s| format!("s{s}")).collect(),
        SetValues::Num(v) => v
            .iter()
            .map(|x| format!("n{:x}", canonical_bits(*x)))
            .collect(),
        SetValues::Ip(v) => v.iter().map(|n| format!("i{n}")).collect(),
    };
    id.sort();
    id.dedup();
    id
}

/// `register OP k`, one variant per operator.
fn reg_const(r: u32, op: CmpOp, k: f64) -> Test {
    match op {
        CmpOp::Eq => Test::Eq(r, k),
        CmpOp::Ne => Test::Ne(r, k),
        CmpOp::Lt => Test::Lt(r, k),
        CmpOp::Le => Test::Le(r, k),
        CmpOp::Gt => Test::Gt(r, k),
        CmpOp::Ge => Test::Ge(r, k),
    }
}

/// The operator with its sides swapped: `k < x` is `x > k`.
fn mirror(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        same => same,
    }
}
