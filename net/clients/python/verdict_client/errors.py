"""Typed errors of the verdict client.

`VerdictError` is an error frame (kind 0xFF) the server sent for one request; there is one
subclass per error code of net/src/codes.rs (PROTOCOL.md section 1.2). `ProtocolError` means
the server's bytes broke the protocol (bad header, a payload that fails validation, an
unexpected kind or id). `ConnectionClosed` means the peer closed the connection.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of everything this package raises about a connection or a server."""


class ProtocolError(ClientError):
    """The server sent bytes that break the protocol (PROTOCOL.md)."""


class ConnectionClosed(ClientError):
    """The connection was closed (by the server, or by an earlier fatal error)."""


class ResponseTimeout(ConnectionClosed, TimeoutError):
    """No response within the client's timeout. The connection is closed (a frame may have
    been half read, and later answers could not be matched to their requests)."""


class VerdictError(ClientError):
    """An error frame from the server: `code`, its stable `name`, and the server's `message`.

    `id` is the id of the error frame (the request's id; 0 for a refused connection).
    """

    code: int = 0
    name: str = "unknown"
    closes_connection: bool = False

    def __init__(self, code: int, name: str, message: str, id: int = 0):
        super().__init__(f"server error {code} ({name}): {message}")
        self.code = code
        self.name = name
        self.message = message
        self.id = id


class BadMagic(VerdictError):
    code, name, closes_connection = 1, "bad_magic", True


class BadVersion(VerdictError):
    code, name, closes_connection = 2, "bad_version", True


class FrameTooLarge(VerdictError):
    code, name, closes_connection = 3, "frame_too_large", True


class UnknownKind(VerdictError):
    code, name = 4, "unknown_kind"


class InvalidPayload(VerdictError):
    code, name = 5, "invalid_payload"


class BadField(VerdictError):
    code, name = 6, "bad_field"


class BatchTooLarge(VerdictError):
    code, name = 7, "batch_too_large"


class Overloaded(VerdictError):
    code, name = 8, "overloaded"


class Unavailable(VerdictError):
    code, name = 9, "unavailable"


class Internal(VerdictError):
    code, name = 10, "internal"


class Forbidden(VerdictError):
    code, name = 11, "forbidden"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (BadMagic, BadVersion, FrameTooLarge, UnknownKind, InvalidPayload, BadField,
                BatchTooLarge, Overloaded, Unavailable, Internal, Forbidden)
}


def error_for(code: int, message: str, id: int = 0) -> VerdictError:
    """The typed exception for an error frame (a plain VerdictError for an unknown code)."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return VerdictError(code, "unknown", message, id)
    return cls(code, cls.name, message, id)
