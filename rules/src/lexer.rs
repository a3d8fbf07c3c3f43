//! Source text -> tokens with spans. Numbers keep their text (decimals are exact, never
//! floats at this stage); `60s`-style windows and `10.0.0.0/8`-style IPv4 networks are
//! single tokens. `#` starts a comment to the end of the line.

use crate::diag::{Diagnostic, Span};

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    /// An integer or decimal literal, as written (`5000.00`).
    Number(String),
    Str(String),
    /// A window: value in milliseconds, as written.
    Duration {
        ms: u64,
        text: String,
    },
    /// An IPv4 address or network (`10.0.0.0/8`), as written.
    Ip(String),
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Colon,
    /// A single `=` (only `list NAME = [...]` uses it).
    Assign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    /// Text the lexer already reported as an error; the parser takes it as a value so one
    /// typo does not cascade into more errors.
    Bad,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(s) => format!("number `{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Duration { text, .. } => format!("window `{text}`"),
            Tok::Ip(s) => format!("address `{s}`"),
            Tok::Eof => "end of file".into(),
            Tok::Bad => "invalid text".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Semi => ";",
            Tok::Colon => ":",
            Tok::Assign => "=",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            _ => "?",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

/// Milliseconds per window unit.
fn unit_ms(unit: &str) -> Option<u64> {
    match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    }
}

/// Tokenizes `text`; lexical errors are collected and the bad characters skipped, so the
/// parser still sees the rest of the file.
pub fn lex(text: &str) -> (Vec<Token>, Vec<Diagnostic>) {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            Tok::Ident(text[start..i].to_string())
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let digits = &text[start..i];
            let dots = digits.matches('.').count();
            if dots == 3 {
                // IPv4, optionally a network.
                if i < bytes.len() && bytes[i] == b'/' {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                Tok::Ip(text[start..i].to_string())
            } else if dots > 1 || digits.ends_with('.') {
                errors.push(Diagnostic::new(
                    Span::new(start, i),
                    format!("malformed number `{digits}`"),
                ));
                Tok::Bad
            } else if i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                let unit_start = i;
                while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                let unit = &text[unit_start..i];
                match (dots, unit_ms(unit), digits.parse::<u64>()) {
                    (0, Some(ms), Ok(n)) if n > 0 && n.checked_mul(ms).is_some() => Tok::Duration {
                        ms: n * ms,
                        text: text[start..i].to_string(),
                    },
                    _ => {
                        errors.push(Diagnostic::new(
                            Span::new(start, i),
                            format!(
                                "bad window `{}`: a positive whole number with a unit ms, s, m, h or d (e.g. 60s, 10m, 1h, 24h)",
                                &text[start..i]
                            ),
                        ));
                        Tok::Bad
                    }
                }
            } else {
                Tok::Number(digits.to_string())
            }
        } else if c == b'"' {
            i += 1;
            let mut value = String::new();
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b'\n' => break,
                    b'\\' if i + 1 < bytes.len() => {
                        // The escaped character may take several bytes: step over all of them.
                        let escaped = text[i + 1..].chars().next().expect("in bounds");
                        let end = i + 1 + escaped.len_utf8();
                        match escaped {
                            '"' => value.push('"'),
                            '\\' => value.push('\\'),
                            'n' => value.push('\n'),
                            't' => value.push('\t'),
                            other => {
                                errors.push(Diagnostic::new(
                                    Span::new(i, end),
                                    format!("unknown escape `\\{other}`"),
                                ));
                            }
                        }
                        i = end;
                    }
                    _ => {
                        let ch = text[i..].chars().next().expect("in bounds");
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if closed {
                Tok::Str(value)
            } else {
                errors.push(Diagnostic::new(Span::new(start, i), "unterminated string"));
                Tok::Bad
            }
        } else {
            let two = bytes.get(i + 1).copied();
            let (tok, len) = match (c, two) {
                (b'=', Some(b'=')) => (Tok::EqEq, 2),
                (b'!', Some(b'=')) => (Tok::NotEq, 2),
                (b'<', Some(b'=')) => (Tok::Le, 2),
                (b'>', Some(b'=')) => (Tok::Ge, 2),
                (b'=', _) => (Tok::Assign, 1),
                (b'<', _) => (Tok::Lt, 1),
                (b'>', _) => (Tok::Gt, 1),
                (b'{', _) => (Tok::LBrace, 1),
                (b'}', _) => (Tok::RBrace, 1),
                (b'(', _) => (Tok::LParen, 1),
                (b')', _) => (Tok::RParen, 1),
                (b'[', _) => (Tok::LBracket, 1),
                (b']', _) => (Tok::RBracket, 1),
                (b',', _) => (Tok::Comma, 1),
                (b';', _) => (Tok::Semi, 1),
                (b':', _) => (Tok::Colon, 1),
                (b'+', _) => (Tok::Plus, 1),
                (b'-', _) => (Tok::Minus, 1),
                (b'*', _) => (Tok::Star, 1),
                (b'/', _) => (Tok::Slash, 1),
                _ => {
                    let ch = text[i..].chars().next().expect("in bounds");
                    errors.push(Diagnostic::new(
                        Span::new(i, i + ch.len_utf8()),
                        format!("unexpected character `{ch}`"),
                    ));
                    (Tok::Bad, ch.len_utf8())
                }
            };
            i += len;
            tok
        };
        tokens.push(Token {
            tok,
            span: Span::new(start, i),
        });
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: Span::new(text.len(), text.len()),
    });
    (tokens, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        let (t, e) = lex(text);
        assert!(e.is_empty(), "{e:?}");
        t.into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn numbers_windows_and_networks_are_single_tokens() {
        assert_eq!(
            toks("5000.00 60s 10m 24h 10.0.0.0/8 1.2.3.4 7"),
            vec![
                Tok::Number("5000.00".into()),
                Tok::Duration {
                    ms: 60_000,
                    text: "60s".into()
                },
                Tok::Duration {
                    ms: 600_000,
                    text: "10m".into()
                },
                Tok::Duration {
                    ms: 86_400_000,
                    text: "24h".into()
                },
                Tok::Ip("10.0.0.0/8".into()),
                Tok::Ip("1.2.3.4".into()),
                Tok::Number("7".into()),
                Tok::Eof,
            ]
        );
    }

    #[test]
    fn operators_strings_and_comments() {
        assert_eq!(
            toks("a >= 1 # comment\n\"x\\\"y\" != b <= c"),
            vec![
                Tok::Ident("a".into()),
                Tok::Ge,
                Tok::Number("1".into()),
                Tok::Str("x\"y".into()),
                Tok::NotEq,
                Tok::Ident("b".into()),
                Tok::Le,
                Tok::Ident("c".into()),
                Tok::Eof,
            ]
        );
    }

    #[test]
    fn an_unknown_escape_of_a_multibyte_character_is_reported_whole() {
        // Found by fuzzing: the lexer stepped two bytes past the backslash, into the middle of
        // `é`, and panicked slicing the text there.
        let text = "\"a\\\u{e9}b\" x";
        let (t, e) = lex(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].message, "unknown escape `\\\u{e9}`");
        assert_eq!(
            e[0].span,
            Span::new(2, 5),
            "the backslash and all of `\u{e9}`"
        );
        assert_eq!(t[0].tok, Tok::Str("ab".into()));
        assert_eq!(t[1].tok, Tok::Ident("x".into()));
    }

    #[test]
    fn bad_input_is_reported_and_skipped() {
        let (t, e) = lex("a $ 1.2.3 60x \"open");
        let messages: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
        assert!(
            messages[0].contains("unexpected character `$`"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("malformed number `1.2.3`"),
            "{messages:?}"
        );
        assert!(messages[2].contains("bad window `60x`"), "{messages:?}");
        assert!(messages[3].contains("unterminated string"), "{messages:?}");
        assert_eq!(t.first().map(|t| &t.tok), Some(&Tok::Ident("a".into())));
    }
}
