//! Diagnostics: every problem found in a rules file carries a byte span; rendering turns it
//! into `file:line:col`, the source line and a caret under the spot.

use std::fmt::Write as _;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
        }
    }
}

/// A source file: its path (as shown in messages) and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
}

impl Source {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: u32) -> (usize, usize) {
        let offset = (offset as usize).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// `path:line:col: message`, the line, and a caret line under the span.
    pub fn render(&self, d: &Diagnostic) -> String {
        let (line, col) = self.line_col(d.span.start);
        let line_start = self.text[..(d.span.start as usize).min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let text = &self.text[line_start..line_end];
        let span_end = (d.span.end as usize).clamp(d.span.start as usize, line_end);
        let width = self.text[(d.span.start as usize).min(line_end)..span_end]
            .chars()
            .count()
            .max(1);
        let gutter = line.to_string().len();
        let mut out = String::new();
        let _ = writeln!(out, "{}:{line}:{col}: error: {}", self.path, d.message);
        let _ = writeln!(out, "{:gutter$} |", "");
        let _ = writeln!(out, "{line} | {text}");
        let pad: String = text
            .chars()
            .take(col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let _ = writeln!(out, "{:gutter$} | {pad}{}", "", "^".repeat(width));
        out
    }
}

/// One error, located and rendered: what `verdict check` prints and `verdict reload` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// `file:line:col: error: message`, the source line and a caret line.
    pub rendered: String,
}

impl RuleError {
    pub fn new(source: &Source, d: &Diagnostic) -> RuleError {
        let (line, column) = source.line_col(d.span.start);
        RuleError {
            file: source.path.clone(),
            line,
            column,
            message: d.message.clone(),
            rendered: source.render(d),
        }
    }

    /// An error about a file as a whole (it cannot be read, it is not UTF-8, ...).
    pub fn whole_file(file: &str, message: impl Into<String>) -> RuleError {
        let message = message.into();
        RuleError {
            file: file.to_string(),
            line: 1,
            column: 1,
            rendered: format!("{file}: error: {message}\n"),
            message,
        }
    }
}

/// Every error found in a rule set, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<RuleError>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            f.write_str(&e.rendered)?;
        }
        let n = self.errors.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Report {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_and_a_caret_under_the_span() {
        let src = Source::new("r.rules", "rule a {\n    when amout > 5\n}\n");
        let at = src.text.find("amout").unwrap();
        let d = Diagnostic::new(Span::new(at, at + 5), "unknown field `amout`");
        assert_eq!(src.line_col(d.span.start), (2, 10));
        assert_eq!(
            src.render(&d),
            "r.rules:2:10: error: unknown field `amout`\n  |\n2 |     when amout > 5\n  |          ^^^^^\n"
        );
    }

    #[test]
    fn an_error_at_end_of_file_still_renders() {
        let src = Source::new("r.rules", "rule a {");
        let d = Diagnostic::new(Span::new(8, 8), "expected `}`");
        assert!(
            src.render(&d)
                .starts_with("r.rules:1:9: error: expected `}`")
        );
    }
}
