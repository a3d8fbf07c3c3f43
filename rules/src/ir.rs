//! The checked program: every name resolved (fields, attributes, lists, velocity functions,
//! models), every node typed. The checker builds it from the syntax tree; the compiler turns
//! it into closures and the reference interpreter walks it.

use std::net::IpAddr;

use crate::ast::Action;
use crate::diag::Span;
use crate::event::{Field, IpNet, Ty};

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Num(f64),
    Str(Box<str>),
    Bool(bool),
    Ip(IpAddr),
    Field(Field),
    /// `program.attributes[i]`.
    Attr(u32),
    /// `features[i]`; 0 when the event has fewer features.
    Feature(u32),
    /// `program.velocity[i]`'s value for this event.
    Velocity(u32),
    /// `program.models[i]`'s score for this event.
    Model(u32),
    /// The accumulated score (policy conditions only).
    Score,
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// Both sides have the same type (`lhs.ty`).
    Cmp {
        op: CmpOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    Arith {
        op: ArithOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    StrOp {
        op: StrOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    In {
        expr: Box<Node>,
        set: SetRef,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn num(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }

    /// `==` / `!=` on values of other types (the checker allows nothing else).
    pub fn same<T: PartialEq + ?Sized>(self, a: &T, b: &T) -> bool {
        match self {
            CmpOp::Ne => a != b,
            _ => a == b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArithOp {
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    StartsWith,
    EndsWith,
    Contains,
}

impl StrOp {
    #[inline]
    pub fn apply(self, a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        match self {
            StrOp::StartsWith => a.len() >= b.len() && bytes_eq(&a[..b.len()], b),
            StrOp::EndsWith => a.len() >= b.len() && bytes_eq(&a[a.len() - b.len()..], b),
            StrOp::Contains => b.is_empty() || a.windows(b.len()).any(|w| bytes_eq(w, b)),
        }
    }
}

/// Byte equality written as a loop: the strings rules compare are short, and an inlined
/// loop beats a call to `memcmp`.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The right side of `in`.
#[derive(Debug, Clone, PartialEq)]
pub enum SetRef {
    /// `program.lists[i]`.
    List(u32),
    Literal(SetValues),
}

/// The members of a set, all of one type.
#[derive(Debug, Clone, PartialEq)]
pub enum SetValues {
    Str(Vec<Box<str>>),
    Num(Vec<f64>),
    Ip(Vec<IpNet>),
}

impl SetValues {
    pub fn len(&self) -> usize {
        match self {
            SetValues::Str(v) => v.len(),
            SetValues::Num(v) => v.len(),
            SetValues::Ip(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Plain membership by scanning (the reference semantics).
    pub fn contains_str(&self, s: &str) -> bool {
        matches!(self, SetValues::Str(v) if v.iter().any(|m| &**m == s))
    }

    pub fn contains_num(&self, x: f64) -> bool {
        matches!(self, SetValues::Num(v) if v.contains(&x))
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        matches!(self, SetValues::Ip(v) if v.iter().any(|n| n.contains(ip)))
    }
}

/// A named list, loaded from a file or written inline.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    pub name: String,
    pub values: SetValues,
    /// Where it came from: the file path as resolved, or "inline".
    pub origin: String,
}

/// A declared attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub ty: Ty,
    /// The value when the event lacks the attribute or carries another type.
    pub default: AttrDefault,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrDefault {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
}

/// Which velocity function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    Sum,
    Distinct,
}

/// The entity a velocity function counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VelocityKey {
    Account,
    Device,
    Ip,
    Merchant,
}

impl VelocityKey {
    pub fn lookup(name: &str) -> Option<VelocityKey> {
        match name {
            "account" => Some(VelocityKey::Account),
            "device" => Some(VelocityKey::Device),
            "ip" => Some(VelocityKey::Ip),
            "merchant" => Some(VelocityKey::Merchant),
            _ => None,
        }
    }
}

/// One distinct velocity function of the program, e.g. `sum(amount, account, 1h)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VelocitySpec {
    /// Canonical text; identifies the aggregator state across reloads.
    pub id: String,
    pub agg: Agg,
    pub key: VelocityKey,
    pub window_ms: u64,
    /// The summed (number) or counted-distinct value; `None` for `count`.
    pub field: Option<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub shadow: bool,
    pub when: Node,
    pub score: i64,
    pub action: Option<Action>,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub arms: Vec<(Action, Node)>,
    /// `None`: the engine's `[decision] default_action`.
    pub otherwise: Option<Action>,
}

/// A whole checked rule set. Rules are in evaluation and report order: priority (highest
/// first), then the order they were written in.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub rules: Vec<Rule>,
    pub lists: Vec<List>,
    pub attributes: Vec<Attribute>,
    pub velocity: Vec<VelocitySpec>,
    /// Model names in the order `NodeKind::Model` indexes them: the models the rules use.
    pub models: Vec<String>,
    /// Each used model's features (numbers or bools), in its manifest's order.
    pub model_features: Vec<Vec<Node>>,
    /// Each used model's `absent_features = "missing"` (see `ModelInput`).
    pub model_absent_missing: Vec<bool>,
    /// Each used model's fallback score (`fallback model("x") = N`, else 0).
    pub model_fallbacks: Vec<f64>,
    /// `None` when no file has a `policy`: then the rules' actions decide, and the default
    /// action when none fired.
    pub policy: Option<Policy>,
}
