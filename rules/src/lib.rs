//! verdict-rules will own the rule language: lexer, parser, type checker, the compiler to
//! closures, the immutable `RuleSet` and the epoch handle the engine swaps between batches.
//!
//! Nothing is implemented yet: that is the issue "Rules: a typed rule language". Until it
//! lands the engine decides every event with the configured default action at epoch 0.
