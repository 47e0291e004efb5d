"""The one exception type for mistakes a user can fix: the CLI prints it on one line."""

from __future__ import annotations

import re

_WRAPPED = re.compile(r"horovod_llm\.errors\.UserError: ([^\n]+)")


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""


class JobFailed(Exception):
    """A stage failed for a reason already logged above (a rank's traceback, say).

    `retryable` is false when a rank stopped on an error it reported itself (bad input
    does not get better by restarting), true for crashes and lost processes.
    """

    def __init__(self, message: str, retryable: bool = True, lost_host: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.lost_host = lost_host  # a host that stopped answering: a restart waits for Spark to drop it


def user_error_in(exc: BaseException) -> str | None:
    """The message of a UserError raised in a Spark task or Horovod rank, if `exc` wraps one.

    Such errors cross process boundaries as text inside Py4J/Spark exceptions.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        match = _WRAPPED.search(str(exc))
        if match:
            return match.group(1).strip()
        exc = exc.__cause__ or exc.__context__
    return None
