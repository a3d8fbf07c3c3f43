"""A pure-Python client for verdict's wire protocol (net/PROTOCOL.md).

    from verdict_client import Client
    with Client("127.0.0.1", 7400) as c:
        d = c.evaluate({"event_id": "e-1", ...})
        print(d.action, d.to_json())
"""

from .aio import AsyncClient
from .client import Client, tls_context
from .codec import (Decision, ErrorReply, Event, ModelScore, ReloadReply, StatsReply,
                    TopologyReply, validate_event)
from .errors import (BadField, BadMagic, BadVersion, BatchTooLarge, ClientError,
                     ConnectionClosed, ERRORS_BY_CODE, Forbidden, FrameTooLarge, Internal,
                     InvalidPayload, Overloaded, ProtocolError, ResponseTimeout, Unavailable,
                     UnknownKind, VerdictError)
from .routing import fnv1a64, owner_of_account, partition_of
from .sharded import AsyncShardedClient, ShardedClient

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncShardedClient", "BadField", "BadMagic", "BadVersion",
    "BatchTooLarge", "Client", "ClientError", "ConnectionClosed", "Decision", "ERRORS_BY_CODE",
    "ErrorReply", "Event", "Forbidden", "FrameTooLarge", "Internal", "InvalidPayload",
    "ModelScore", "Overloaded", "ProtocolError", "ReloadReply", "ResponseTimeout", "ShardedClient", "StatsReply",
    "TopologyReply", "Unavailable", "UnknownKind", "VerdictError", "fnv1a64",
    "owner_of_account", "partition_of", "tls_context", "validate_event",
]
