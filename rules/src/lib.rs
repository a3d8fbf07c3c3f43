//! verdict-rules owns the rule language: lexer, parser, type checker, the compiler to
//! closures, the immutable `RuleSet` and the epoch handle the engine swaps between batches.
//!
//! Built so far (the issue "Rules" is in progress): [`lexer`] (source -> tokens with spans),
//! [`parser`] (tokens -> [`ast`], recovering after each error so a file's errors are all
//! reported), [`diag`] (`file:line:col` with a caret under the spot). The checker, the
//! compiler, lists, velocity and the engine wiring come next; until then the engine decides
//! every event with its configured default action at epoch 0.

pub mod ast;
pub mod diag;
pub mod lexer;
pub mod parser;

pub use diag::{Diagnostic, Source, Span};
pub use parser::parse;
