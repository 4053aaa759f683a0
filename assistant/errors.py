"""Errors as types. Each carries the HTTP status an edge should answer with and a Chinese message that is shown to
the resident or staff member as is; the API maps every XiaoyuError in one exception handler."""

from __future__ import annotations


class XiaoyuError(Exception):
    status: int = 400

    def __init__(self, user_message: str, *, status: int | None = None):
        super().__init__(user_message)
        self.user_message = user_message
        if status is not None:
            self.status = status


class BadQuestion(XiaoyuError, ValueError):
    """A question that can't be asked (empty, too long, unusable characters)."""

    status = 422


class NotFound(XiaoyuError, LookupError):
    """A document, chunk, session or request that does not exist: raise NotFound("知识库中没有这个文档：…")."""

    status = 404


class UploadRejected(XiaoyuError, ValueError):
    """A file that can't be taken into the knowledge base; nothing of it was kept."""

    status = 422


class LimitExceeded(XiaoyuError):
    """Input past a configured budget (body size, upload size, inflated size, pages, characters)."""

    status = 413


class TooManyRequests(XiaoyuError):
    status = 429


class Unavailable(XiaoyuError):
    """A shared store (Redis, the Chroma server) that stopped answering after start: a 503 the client may retry."""

    status = 503


class LoadError(UploadRejected):
    """A file the loaders can't read (broken, encrypted, a bomb, over a budget): the reason names the limit."""
