"""The one exception type for user-facing errors, and the one for a SIGTERM."""


class LmlabError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line (``error: ...``) and exits with status 2,
    without a traceback. The message names the problem and the fix.
    """


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM (by the commands that clean up on it).

    Not a KeyboardInterrupt on purpose: CPython remembers a KeyboardInterrupt that passes through
    code an extension runs with ``PyRun_*`` and then exits by SIGINT even after the program caught
    it (``_Py_UnhandledKeyboardInterrupt``); the CLI exits with status 130 on either.
    """
