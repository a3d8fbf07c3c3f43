//! The syntax tree of a rules file, every node with its span. Literals keep their text
//! (decimals stay exact until the checker turns them into typed constants).

use crate::diag::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    List(ListDecl),
    Rule(RuleDecl),
    Policy(Policy),
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

/// The three actions, in precedence order (deny wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionName {
    Allow,
    Review,
    Deny,
}

impl ActionName {
    pub fn parse(text: &str) -> Option<ActionName> {
        match text {
            "allow" => Some(ActionName::Allow),
            "review" => Some(ActionName::Review),
            "deny" => Some(ActionName::Deny),
            _ => None,
        }
    }
}

/// `[shadow] rule NAME { when EXPR  score N  action A  priority N }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDecl {
    pub name: Ident,
    pub shadow: bool,
    pub when: Expr,
    pub score: Option<(i64, Span)>,
    pub action: Option<(ActionName, Span)>,
    pub priority: Option<(i64, Span)>,
    pub span: Span,
}

/// `policy { ACTION when EXPR; ...; otherwise ACTION }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub arms: Vec<PolicyArm>,
    pub otherwise: Option<(ActionName, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyArm {
    pub action: ActionName,
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
