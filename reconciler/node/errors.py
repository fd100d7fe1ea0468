"""The node's error type: a sentence for the operator plus whether a later pass may succeed.

Every failure a request can meet is raised as a ``NodeError`` (or a subclass) so that the
dispatcher turns it into a protocol ``Failure`` without a traceback. Must not do any I/O.
"""

from __future__ import annotations


class NodeError(Exception):
    """A request failed. ``temporary``: retrying on a later pass may succeed."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary

    def __str__(self) -> str:
        return self.message
