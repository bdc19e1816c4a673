"""The one exception type for user-facing errors, and the one for a SIGTERM."""


class LmlabError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line (``error: ...``) and exits with status 2,
    without a traceback. The message names the problem and the fix.
    """


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM (by the commands that clean up on it).

    Not a KeyboardInterrupt on purpose: a KeyboardInterrupt raised by the SIGTERM handler and caught
    by the program still ended the process by SIGINT now and then, without a traceback (seen in
    the lineage interrupt test; CPython's exit-by-SIGINT after a KeyboardInterrupt is the likely
    path). The CLI exits with status 130 on either.
    """
