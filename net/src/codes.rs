//! Error codes carried in an error frame's `ErrorReply.code`. The numbers are part of the
//! protocol: never renumber, only add.

/// Why a request got an error frame instead of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ErrorCode {
    /// The header did not start with "VD". The server closes the connection after this.
    BadMagic = 1,
    /// The header's version is not 1. The server closes the connection after this.
    BadVersion = 2,
    /// The header's payload length is over the server's frame limit. Closes the connection.
    FrameTooLarge = 3,
    /// The kind byte names no request. The connection goes on.
    UnknownKind = 4,
    /// The payload failed rkyv/bytecheck validation, or a kind that takes an empty payload
    /// had one. The connection goes on.
    InvalidPayload = 5,
    /// The payload was well formed but a field's value is out of range (the message names
    /// the field). The connection goes on.
    BadField = 6,
    /// An evaluate-batch carried more events than the server's batch limit, or none.
    BatchTooLarge = 7,
    /// A bounded queue or pool was full: connections per shard, cross-shard requests. The
    /// request was not processed; retry later. A refused connection gets this, then closes.
    Overloaded = 8,
    /// Another shard did not answer a cross-shard request within its deadline.
    Unavailable = 9,
    /// The server failed to build a response it should have been able to build (a bug).
    Internal = 10,
    /// The request is not served on this port: reloads (kind 0x06) go through the admin
    /// port's authenticated control API unless the engine keeps `[admin] wire_reload`. The
    /// request changed nothing; the connection goes on.
    Forbidden = 11,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadMagic,
        ErrorCode::BadVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKind,
        ErrorCode::InvalidPayload,
        ErrorCode::BadField,
        ErrorCode::BatchTooLarge,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
    ];

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }

    /// The code's stable lower-case name, as used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadMagic => "bad_magic",
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
        }
    }

    /// The HTTP status the HTTP/JSON API answers this error with (its body carries the same
    /// `code`, `name` and `message` an error frame would).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadMagic | ErrorCode::InvalidPayload => 400,
            ErrorCode::BadVersion => 505,
            ErrorCode::FrameTooLarge | ErrorCode::BatchTooLarge => 413,
            ErrorCode::UnknownKind => 404,
            ErrorCode::BadField => 422,
            ErrorCode::Overloaded => 503,
            ErrorCode::Unavailable => 504,
            ErrorCode::Internal => 500,
            ErrorCode::Forbidden => 403,
        }
    }

    /// Whether the server closes the connection after sending this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadMagic | ErrorCode::BadVersion | ErrorCode::FrameTooLarge
        )
    }
}

impl From<crate::frame::FrameError> for ErrorCode {
    fn from(e: crate::frame::FrameError) -> ErrorCode {
        match e {
            crate::frame::FrameError::BadMagic { .. } => ErrorCode::BadMagic,
            crate::frame::FrameError::BadVersion { .. } => ErrorCode::BadVersion,
            crate::frame::FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as u16, i as u16 + 1);
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(12), None);
    }

    #[test]
    fn every_code_has_an_error_status() {
        for code in ErrorCode::ALL {
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code:?} -> {status}");
        }
    }
}
