"""The one exception type a user can cause.

Anything raised as :class:`UserError` is printed by the CLI as one line (``error: <message>``) and the
process exits with status 2, without a traceback. The message must say what is wrong *and* what to do.
"""


class UserError(Exception):
    """A problem with the user's input (unknown name, missing data, malformed file, infeasible budget)."""
