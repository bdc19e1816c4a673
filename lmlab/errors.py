"""The one exception type for user-facing errors."""


class LmlabError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line (``error: ...``) and exits with status 2,
    without a traceback. The message names the problem and the fix.
    """
