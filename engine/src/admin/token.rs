//! The control API's bearer token: read once at start from `admin.token_file`, which only
//! its owner may read or write (else the engine refuses to start: a token others can read
//! authenticates nobody), and compared in constant time.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// Shortest token accepted: anything shorter is guessable, not a secret.
pub const TOKEN_LEN_MIN_BYTES: usize = 16;
/// Longest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token (surrounding whitespace trimmed) from `path`.
    pub fn load(path: &Path) -> Result<Token, String> {
        let shown = path.display();
        // Checked on the file opened, not the path: a swap between check and read changes
        // nothing.
        let file =
            std::fs::File::open(path).map_err(|e| format!("admin.token_file {shown}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("admin.token_file {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("admin.token_file {shown}: not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "admin.token_file {shown}: mode {mode:04o} lets group or others at the token; \
                 `chmod 600 {shown}` (the engine's user alone may read it)"
            ));
        }
        let mut text = Vec::new();
        file.take(TOKEN_FILE_BYTES_MAX + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("admin.token_file {shown}: {e}"))?;
        if text.len() as u64 > TOKEN_FILE_BYTES_MAX {
            return Err(format!(
                "admin.token_file {shown}: over {TOKEN_FILE_BYTES_MAX} bytes"
            ));
        }
        let token = text.trim_ascii().to_vec();
        if token.len() < TOKEN_LEN_MIN_BYTES {
            return Err(format!(
                "admin.token_file {shown}: the token has {} bytes; at least {TOKEN_LEN_MIN_BYTES} \
                 (e.g. `openssl rand -hex 32 > {shown}`)",
                token.len()
            ));
        }
        if token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "admin.token_file {shown}: the token must be printable ASCII without spaces \
                 (it travels in an HTTP header)"
            ));
        }
        Ok(Token(token))
    }

    /// Whether an `Authorization` header value carries this token. Constant time in the
    /// token's bytes (a length mismatch returns early: the length is not the secret).
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        self.0.ct_eq(presented.trim().as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "verdict-token-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_loads_and_admits_only_its_token() {
        let path = file("ok", "0123456789abcdef0123\n", 0o600);
        let token = Token::load(&path).unwrap();
        assert!(token.admits(Some("Bearer 0123456789abcdef0123")));
        assert!(!token.admits(Some("Bearer 0123456789abcdef0124")));
        assert!(!token.admits(Some("Bearer 0123456789abcdef012")));
        assert!(!token.admits(Some("Basic 0123456789abcdef0123")));
        assert!(!token.admits(Some("0123456789abcdef0123")));
        assert!(!token.admits(None));
        assert_eq!(format!("{token:?}"), "Token(..)", "never printed");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn loose_modes_short_tokens_and_odd_bytes_refuse_to_start() {
        for (mode, text, why) in [
            (0o644, "0123456789abcdef0123", "chmod 600"),
            (0o640, "0123456789abcdef0123", "chmod 600"),
            (0o602, "0123456789abcdef0123", "chmod 600"),
            (0o600, "short", "at least 16"),
            (0o600, "0123456789 abcdef0123", "printable ASCII"),
        ] {
            let path = file("bad", text, mode);
            let e = Token::load(&path).unwrap_err();
            assert!(e.contains(why), "{mode:o} {text:?}: {e}");
            assert!(
                !e.contains("0123456789abcdef"),
                "the error never quotes the token: {e}"
            );
            std::fs::remove_file(path).unwrap();
        }
    }
}
