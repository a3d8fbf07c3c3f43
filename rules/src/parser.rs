//! Tokens -> syntax tree, by recursive descent. Every error is recorded with its span and
//! parsing resumes at the next clause (`when`, `score`, `action`, `priority`, `}`) or item
//! (`rule`, `shadow`, `list`, `policy`), so one run reports all the errors in a file.
//!
//! Precedence, loosest first: `or`; `and`; `not`; comparisons, `in` / `not in`,
//! `starts_with` / `ends_with` / `contains` (non-associative); `+ -`; `* /`; unary `-`;
//! indexing `x[i]`.

use crate::ast::*;
use crate::diag::{Diagnostic, Span};
use crate::lexer::{Tok, Token, lex};

/// Words that cannot name a field, list or rule. (`score` is not one: the policy compares
/// the accumulated score, `deny when score >= 80`.)
pub const KEYWORDS: [&str; 18] = [
    "list",
    "attribute",
    "from",
    "rule",
    "shadow",
    "when",
    "action",
    "priority",
    "policy",
    "otherwise",
    "and",
    "or",
    "not",
    "in",
    "true",
    "false",
    "starts_with",
    "ends_with",
];

/// Words that open an item: error recovery stops before them.
const ITEM_WORDS: [&str; 6] = ["rule", "shadow", "list", "attribute", "policy", "fallback"];

/// `contains` is an operator too, but may still appear as an attribute name in calls; it is
/// recognised only in operator position.
const CONTAINS: &str = "contains";

/// Parses one expression that must fill `text` (a model's feature). Spans are offsets in
/// `text`.
pub fn parse_expr(text: &str) -> (Option<Expr>, Vec<Diagnostic>) {
    let (tokens, mut errors) = lex(text);
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
    };
    let expr = match p.expr() {
        Ok(e) if *p.peek() == Tok::Eof => Some(e),
        Ok(_) => {
            let _ = p.expected::<()>("the end of the expression");
            None
        }
        Err(Bail) => None,
    };
    errors.append(&mut p.errors);
    errors.sort_by_key(|d| d.span.start);
    (expr, errors)
}

/// Parses a whole file: the tree of everything that parsed, and every error.
pub fn parse(text: &str) -> (File, Vec<Diagnostic>) {
    let (tokens, mut errors) = lex(text);
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
    };
    let file = p.file();
    errors.append(&mut p.errors);
    errors.sort_by_key(|d| d.span.start);
    (file, errors)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    errors: Vec<Diagnostic>,
}

/// Parsing gave up on the current clause; the error is already recorded.
struct Bail;

type PResult<T> = Result<T, Bail>;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)].tok
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].span
    }

    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }

    fn bump(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w == word)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.is_word(word) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn error<T>(&mut self, span: Span, message: impl Into<String>) -> PResult<T> {
        self.errors.push(Diagnostic::new(span, message));
        Err(Bail)
    }

    fn expected<T>(&mut self, what: &str) -> PResult<T> {
        let found = self.peek().describe();
        let span = self.span();
        self.error(span, format!("expected {what}, found {found}"))
    }

    fn expect(&mut self, tok: Tok, what: &str) -> PResult<Span> {
        if *self.peek() == tok {
            Ok(self.bump().span)
        } else {
            self.expected(what)
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek().clone() {
            Tok::Ident(name) if !KEYWORDS.contains(&name.as_str()) => {
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            Tok::Ident(name) => {
                // Consume the keyword so recovery does not restart at it (`rule policy {`).
                let span = self.bump().span;
                self.error(
                    span,
                    format!("`{name}` is a keyword and cannot be used as {what}"),
                )
            }
            _ => self.expected(what),
        }
    }

    /// Skips to the start of the next item, at brace depth 0.
    fn recover_item(&mut self) {
        let mut depth = 0i32;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::LBrace => depth += 1,
                Tok::RBrace => {
                    depth -= 1;
                    if depth <= 0 {
                        self.bump();
                        return;
                    }
                }
                Tok::Ident(w) if depth <= 0 && ITEM_WORDS.contains(&w.as_str()) => return,
                _ => {}
            }
            self.bump();
        }
    }

    /// Skips to the next clause keyword or the closing brace of the current block.
    fn recover_clause(&mut self, clauses: &[&str]) {
        let mut depth = 0i32;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::LBrace | Tok::LParen | Tok::LBracket => depth += 1,
                Tok::RParen | Tok::RBracket => depth -= 1,
                Tok::RBrace if depth <= 0 => return,
                Tok::RBrace => depth -= 1,
                Tok::Semi if depth <= 0 => return,
                Tok::Ident(w) if depth <= 0 && clauses.contains(&w.as_str()) => return,
                Tok::Ident(w) if ITEM_WORDS.contains(&w.as_str()) => return,
                _ => {}
            }
            self.bump();
        }
    }

    fn file(&mut self) -> File {
        let mut items = Vec::new();
        while *self.peek() != Tok::Eof {
            let start = self.pos;
            let item = if self.is_word("list") {
                self.list().map(Item::List)
            } else if self.is_word("attribute") {
                self.attribute().map(Item::Attribute)
            } else if self.is_word("rule") || self.is_word("shadow") {
                self.rule().map(Item::Rule)
            } else if self.is_word("policy") {
                self.policy().map(Item::Policy)
            } else if self.is_word("fallback") {
                self.fallback().map(Item::Fallback)
            } else {
                self.expected("`rule`, `shadow rule`, `list`, `attribute`, `fallback` or `policy`")
            };
            match item {
                Ok(item) => items.push(item),
                Err(Bail) => {
                    self.recover_item();
                    if self.pos == start {
                        self.bump();
                    }
                }
            }
        }
        File { items }
    }

    fn list(&mut self) -> PResult<ListDecl> {
        let start = self.bump().span; // `list`
        let name = self.ident("a list name")?;
        let source = if self.eat_word("from") {
            match self.peek().clone() {
                Tok::Str(path) => {
                    let span = self.bump().span;
                    ListSource::File { path, span }
                }
                _ => return self.expected("a quoted file path after `from`"),
            }
        } else if *self.peek() == Tok::Assign {
            self.bump();
            let set = self.set_literal()?;
            match set.kind {
                ExprKind::Set(items) => ListSource::Inline(items),
                _ => unreachable!("set_literal returns a set"),
            }
        } else {
            return self.expected("`from \"file\"` or `= [ ... ]`");
        };
        Ok(ListDecl {
            name,
            source,
            span: start.to(self.prev_span()),
        })
    }

    fn fallback(&mut self) -> PResult<FallbackDecl> {
        let start = self.bump().span; // `fallback`
        let model = self.primary()?;
        self.expect(Tok::Assign, "`=` and a score after the model")?;
        let value = self.expr()?;
        Ok(FallbackDecl {
            model,
            value,
            span: start.to(self.prev_span()),
        })
    }

    fn attribute(&mut self) -> PResult<AttrDecl> {
        let start = self.bump().span; // `attribute`
        let name = self.ident("an attribute name")?;
        self.expect(Tok::Colon, "`:` and a type after the attribute name")?;
        let ty = match self.peek() {
            Tok::Ident(w) if w == "string" => AttrType::String,
            Tok::Ident(w) if w == "number" => AttrType::Number,
            Tok::Ident(w) if w == "bool" => AttrType::Bool,
            _ => return self.expected("a type: string, number or bool"),
        };
        let ty_span = self.bump().span;
        let default = if *self.peek() == Tok::Assign {
            self.bump();
            Some(self.expr()?)
        } else {
            None
        };
        Ok(AttrDecl {
            name,
            ty,
            ty_span,
            default,
            span: start.to(self.prev_span()),
        })
    }

    fn rule(&mut self) -> PResult<RuleDecl> {
        let start = self.span();
        let shadow = self.eat_word("shadow");
        if !self.eat_word("rule") {
            return self.expected("`rule` after `shadow`");
        }
        let name = self.ident("a rule name")?;
        self.expect(Tok::LBrace, "`{` to open the rule")?;
        const CLAUSES: [&str; 4] = ["when", "score", "action", "priority"];
        let mut when = None;
        let mut score = None;
        let mut action = None;
        let mut priority = None;
        // Clauses that were written but failed to parse: their errors are already reported,
        // so their absence must not be reported again.
        let mut failed: Vec<String> = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::RBrace => {
                    self.bump();
                    break;
                }
                Tok::Eof => return self.expected("`}` to close the rule"),
                Tok::Ident(w) if CLAUSES.contains(&w.as_str()) => {
                    let clause_span = self.bump().span;
                    let repeated = match w.as_str() {
                        "when" => when.is_some(),
                        "score" => score.is_some(),
                        "priority" => priority.is_some(),
                        _ => action.is_some(),
                    };
                    if repeated {
                        let _ = self.error::<()>(
                            clause_span,
                            format!("a second `{w}` in rule `{}`: a rule has one", name.name),
                        );
                    }
                    let result = match w.as_str() {
                        "when" => self.expr().map(|e| when = Some(e)),
                        "score" => self
                            .integer("a score (a whole number)")
                            .map(|v| score = Some(v)),
                        "priority" => self
                            .integer("a priority (a whole number)")
                            .map(|v| priority = Some(v)),
                        _ => self.action_name().map(|a| action = Some(a)),
                    };
                    if result.is_err() {
                        failed.push(w.clone());
                        self.recover_clause(&CLAUSES);
                    }
                }
                _ => {
                    let _ = self.expected::<()>("`when`, `score`, `action`, `priority` or `}`");
                    self.bump();
                    self.recover_clause(&CLAUSES);
                }
            }
        }
        let span = start.to(self.prev_span());
        let Some(when) = when else {
            if failed.iter().any(|c| c == "when") {
                return Err(Bail);
            }
            return self.error(
                name.span,
                format!("rule `{}` has no `when` condition", name.name),
            );
        };
        if score.is_none() && action.is_none() {
            if failed.iter().any(|c| c == "score" || c == "action") {
                return Err(Bail);
            }
            return self.error(
                name.span,
                format!(
                    "rule `{}` has neither `score` nor `action`: it could never matter",
                    name.name
                ),
            );
        }
        Ok(RuleDecl {
            name,
            shadow,
            when,
            score,
            action,
            priority,
            span,
        })
    }

    fn integer(&mut self, what: &str) -> PResult<(i64, Span)> {
        let start = self.span();
        let negative = *self.peek() == Tok::Minus;
        if negative {
            self.bump();
        }
        match self.peek().clone() {
            Tok::Number(text) if !text.contains('.') => {
                let span = start.to(self.bump().span);
                match text.parse::<i64>() {
                    Ok(v) => Ok((if negative { -v } else { v }, span)),
                    Err(_) => self.error(span, format!("{text} is out of range")),
                }
            }
            _ => self.expected(what),
        }
    }

    fn action_name(&mut self) -> PResult<(Action, Span)> {
        match self.peek().clone() {
            Tok::Ident(w) => match Action::parse(&w) {
                Some(a) => Ok((a, self.bump().span)),
                None => {
                    let span = self.span();
                    self.error(
                        span,
                        format!("unknown action `{w}`: expected allow, review or deny"),
                    )
                }
            },
            _ => self.expected("an action (allow, review or deny)"),
        }
    }

    fn policy(&mut self) -> PResult<Policy> {
        let start = self.bump().span; // `policy`
        self.expect(Tok::LBrace, "`{` to open the policy")?;
        let mut arms = Vec::new();
        let mut otherwise = None;
        loop {
            match self.peek().clone() {
                Tok::RBrace => {
                    self.bump();
                    break;
                }
                Tok::Semi => {
                    self.bump();
                }
                Tok::Eof => return self.expected("`}` to close the policy"),
                // The next item: the policy was never closed. (Recovering from an arm stops
                // before these words, so trying them as an action would never move on.)
                Tok::Ident(w) if ITEM_WORDS.contains(&w.as_str()) => {
                    return self.expected("`}` to close the policy");
                }
                Tok::Ident(w) if w == "otherwise" => {
                    let at = self.bump().span;
                    if otherwise.is_some() {
                        let _ = self.error::<()>(at, "a second `otherwise`: a policy has one");
                    }
                    match self.action_name() {
                        Ok(a) => otherwise = Some(a),
                        Err(Bail) => self.recover_clause(&[]),
                    }
                }
                _ => {
                    let arm_start = self.span();
                    let arm = self.action_name().and_then(|(action, _)| {
                        if !self.eat_word("when") {
                            return self.expected("`when` after the action");
                        }
                        let when = self.expr()?;
                        Ok(PolicyArm {
                            action,
                            span: arm_start.to(when.span),
                            when,
                        })
                    });
                    match arm {
                        Ok(arm) => {
                            if let Some((_, at)) = otherwise {
                                let _ = self.error::<()>(
                                    arm.span,
                                    "this arm comes after `otherwise` and can never be reached",
                                );
                                let _ = at;
                            }
                            arms.push(arm);
                        }
                        Err(Bail) => self.recover_clause(&[]),
                    }
                }
            }
        }
        Ok(Policy {
            arms,
            otherwise,
            span: start.to(self.prev_span()),
        })
    }

    // ---- expressions ----

    fn expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.and_expr()?;
        while self.eat_word("or") {
            let rhs = self.and_expr()?;
            lhs = binary(BinOp::Or, lhs, rhs);
        }
        Ok(lhs)
    }

    fn and_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.not_expr()?;
        while self.eat_word("and") {
            let rhs = self.not_expr()?;
            lhs = binary(BinOp::And, lhs, rhs);
        }
        Ok(lhs)
    }

    fn not_expr(&mut self) -> PResult<Expr> {
        if self.is_word("not") && !matches!(self.peek_at(1), Tok::Ident(w) if w == "in") {
            let start = self.bump().span;
            let inner = self.not_expr()?;
            let span = start.to(inner.span);
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op: UnOp::Not,
                    expr: Box::new(inner),
                },
                span,
            });
        }
        self.cmp_expr()
    }

    fn cmp_expr(&mut self) -> PResult<Expr> {
        let lhs = self.add_expr()?;
        let op = match self.peek() {
            Tok::EqEq => Some(BinOp::Eq),
            Tok::NotEq => Some(BinOp::Ne),
            Tok::Lt => Some(BinOp::Lt),
            Tok::Le => Some(BinOp::Le),
            Tok::Gt => Some(BinOp::Gt),
            Tok::Ge => Some(BinOp::Ge),
            Tok::Ident(w) if w == "starts_with" => Some(BinOp::StartsWith),
            Tok::Ident(w) if w == "ends_with" => Some(BinOp::EndsWith),
            Tok::Ident(w) if w == CONTAINS => Some(BinOp::Contains),
            Tok::Assign => {
                let span = self.span();
                return self.error(span, "`=` is not a comparison: write `==`");
            }
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let rhs = self.add_expr()?;
            return Ok(binary(op, lhs, rhs));
        }
        let negated = self.is_word("not") && matches!(self.peek_at(1), Tok::Ident(w) if w == "in");
        if negated || self.is_word("in") {
            if negated {
                self.bump();
            }
            self.bump(); // `in`
            let set = self.add_expr()?;
            let span = lhs.span.to(set.span);
            return Ok(Expr {
                kind: ExprKind::In {
                    expr: Box::new(lhs),
                    set: Box::new(set),
                    negated,
                },
                span,
            });
        }
        Ok(lhs)
    }

    fn add_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.mul_expr()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.mul_expr()?;
            lhs = binary(op, lhs, rhs);
        }
    }

    fn mul_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.unary()?;
            lhs = binary(op, lhs, rhs);
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        if *self.peek() == Tok::Minus {
            let start = self.bump().span;
            let inner = self.unary()?;
            let span = start.to(inner.span);
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op: UnOp::Neg,
                    expr: Box::new(inner),
                },
                span,
            });
        }
        let mut e = self.primary()?;
        while *self.peek() == Tok::LBracket {
            self.bump();
            let index = self.expr()?;
            let end = self.expect(Tok::RBracket, "`]`")?;
            let span = e.span.to(end);
            e = Expr {
                kind: ExprKind::Index {
                    base: Box::new(e),
                    index: Box::new(index),
                },
                span,
            };
        }
        Ok(e)
    }

    fn set_literal(&mut self) -> PResult<Expr> {
        let start = self.expect(Tok::LBracket, "`[`")?;
        let mut items = Vec::new();
        if *self.peek() != Tok::RBracket {
            loop {
                items.push(self.expr()?);
                if *self.peek() == Tok::Comma {
                    self.bump();
                    if *self.peek() == Tok::RBracket {
                        break;
                    }
                } else {
                    break;
                }
            }
        }
        let end = self.expect(Tok::RBracket, "`,` or `]`")?;
        Ok(Expr {
            kind: ExprKind::Set(items),
            span: start.to(end),
        })
    }

    fn primary(&mut self) -> PResult<Expr> {
        let span = self.span();
        let kind = match self.peek().clone() {
            Tok::Number(n) => ExprKind::Number(n),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Ip(s) => ExprKind::Ip(s),
            Tok::Duration { ms, .. } => ExprKind::Duration(ms),
            Tok::Bad => ExprKind::Invalid,
            Tok::LBracket => return self.set_literal(),
            Tok::LParen => {
                self.bump();
                let inner = self.expr()?;
                let end = self.expect(Tok::RParen, "`)`")?;
                return Ok(Expr {
                    kind: inner.kind,
                    span: span.to(end),
                });
            }
            Tok::Ident(w) if w == "true" || w == "false" => ExprKind::Bool(w == "true"),
            Tok::Ident(w) if KEYWORDS.contains(&w.as_str()) => {
                return self.error(span, format!("expected a value, found keyword `{w}`"));
            }
            Tok::Ident(w) => {
                self.bump();
                if *self.peek() == Tok::LParen {
                    self.bump();
                    let mut args = Vec::new();
                    if *self.peek() != Tok::RParen {
                        loop {
                            args.push(self.expr()?);
                            if *self.peek() == Tok::Comma {
                                self.bump();
                            } else {
                                break;
                            }
                        }
                    }
                    let end = self.expect(Tok::RParen, "`,` or `)`")?;
                    let func = Ident { name: w, span };
                    return Ok(Expr {
                        kind: ExprKind::Call { func, args },
                        span: span.to(end),
                    });
                }
                return Ok(Expr {
                    kind: ExprKind::Name(w),
                    span,
                });
            }
            _ => return self.expected("a value (field, number, string, list, `(`)"),
        };
        self.bump();
        Ok(Expr { kind, span })
    }
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr) -> Expr {
    let span = lhs.span.to(rhs.span);
    Expr {
        kind: ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(text: &str) -> Vec<String> {
        parse(text).1.into_iter().map(|d| d.message).collect()
    }

    #[test]
    fn a_repeated_clause_is_an_error_not_a_silent_override() {
        assert_eq!(
            messages("rule r { when amount > 1  when amount < 0  score 5 }"),
            vec!["a second `when` in rule `r`: a rule has one"]
        );
        assert_eq!(
            messages("rule r { when amount > 1  score 5  score 7 }"),
            vec!["a second `score` in rule `r`: a rule has one"]
        );
    }

    #[test]
    fn a_policy_cut_short_by_the_next_item_ends_there() {
        // Found by fuzzing: an arm that failed at `rule` recovered to just before it, the
        // policy loop tried `rule` as an action again, and so on until memory ran out.
        let (file, errors) =
            parse("policy { deny when score >= 80;\nrule r { when amount > 1  score 5 }");
        let first: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            first,
            vec!["expected `}` to close the policy, found `rule`"]
        );
        assert!(
            matches!(&file.items[..], [Item::Rule(r)] if r.name.name == "r"),
            "{file:?}"
        );
        assert_eq!(
            messages("policy { deny when score >= 80; review when  policy { }"),
            vec![
                "expected a value, found keyword `policy`",
                "expected `}` to close the policy, found `policy`"
            ]
        );
    }

    #[test]
    fn a_second_otherwise_is_an_error() {
        assert_eq!(
            messages("policy { deny when score >= 80; otherwise review; otherwise allow }"),
            vec!["a second `otherwise`: a policy has one"]
        );
    }
}
