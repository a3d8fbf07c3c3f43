//! The syntax tree of a rules file, every node with its span. Literals keep their text
//! (decimals stay exact until the checker turns them into typed constants).

use crate::diag::Span;
pub use verdict_net::Action;

#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    List(ListDecl),
    Attribute(AttrDecl),
    Rule(RuleDecl),
    Policy(Policy),
    Fallback(FallbackDecl),
}

/// `fallback model("NAME") = NUMBER`: the score a model's events get when the model fails
/// (trap, deadline, no ready instance). Without one it is 0.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackDecl {
    pub model: Expr,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `list NAME from "PATH"` or `list NAME = [ ... ]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListDecl {
    pub name: Ident,
    pub source: ListSource,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListSource {
    /// A file, one entry per line, relative to the rules file.
    File {
        path: String,
        span: Span,
    },
    Inline(Vec<Expr>),
}

/// `attribute NAME: TYPE [= DEFAULT]`: declares an event attribute the rules read by name.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrDecl {
    pub name: Ident,
    pub ty: AttrType,
    pub ty_span: Span,
    /// The value when an event lacks the attribute (or carries it with another type).
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Number,
    Bool,
}

/// `[shadow] rule NAME { when EXPR  score N  action A  priority N }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDecl {
    pub name: Ident,
    pub shadow: bool,
    pub when: Expr,
    pub score: Option<(i64, Span)>,
    pub action: Option<(Action, Span)>,
    pub priority: Option<(i64, Span)>,
    pub span: Span,
}

/// `policy { ACTION when EXPR; ...; otherwise ACTION }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub arms: Vec<PolicyArm>,
    pub otherwise: Option<(Action, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyArm {
    pub action: Action,
    pub when: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Number(String),
    Str(String),
    Bool(bool),
    /// An IPv4 address or network as written.
    Ip(String),
    /// A window, milliseconds.
    Duration(u64),
    /// A field, list, attribute or velocity key.
    Name(String),
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    Call {
        func: Ident,
        args: Vec<Expr>,
    },
    /// A literal set `[a, b, c]`.
    Set(Vec<Expr>),
    Unary {
        op: UnOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `expr in set` / `expr not in set`; `set` is a literal set or a list name.
    In {
        expr: Box<Expr>,
        set: Box<Expr>,
        negated: bool,
    },
    /// Where the source had text already reported as an error.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    StartsWith,
    EndsWith,
    Contains,
}
