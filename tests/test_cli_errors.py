"""The CLI's answer to bad input and failures, through the real CLI in a subprocess: one line on stderr
naming the problem and the fix, a non-zero exit status, and no traceback unless ``--debug`` asks for it.

Failures a test cannot cause for real (no compiler, a full disk) are forced by a few lines of patching
run in the CLI's own process before :func:`lmlab.cli.main` (see :func:`run_patched`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TINY = ["--model", "llama-tiny", "--d-model", "32", "--n-layer", "1", "--block-size", "16",
        "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress", "--warmup-steps", "2",
        "--eval-iters", "1"]
ENV = {"LMLAB_PEAK_FLOPS": "1e11"}  # no FLOP/s probe in the subprocesses


def run_patched(setup: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess after executing ``setup`` (Python) there."""
    code = f"{textwrap.dedent(setup)}\nimport sys\nfrom lmlab.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=300)


def one_error_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """Assert ``r`` failed with ``code``, one line on stderr and no traceback; return that line."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    assert lines[0].startswith("error: ")
    return lines[0]


# A command that fails in a given way: the patched 'lmlab corpora'.
FAILING = """
    import errno
    import lmlab.data.commands as commands
    from lmlab.errors import LmlabError
    def corpora(cfg: commands.CorporaConfig) -> None:
        raise {error}
    commands.corpora = corpora
"""
FAILURES = {
    "unexpected": ('ValueError("bad shape (3, 4)\\nmore detail")', 1,
                   "error: ValueError: bad shape (3, 4) (run again with --debug for the traceback)"),
    "disk full": ('OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors")', 1,
                  "error: no space left on the device (/runs/x/model.safetensors); free disk space or write "
                  "elsewhere, then run again"),
    "permission denied": ('PermissionError(errno.EACCES, "Permission denied", "/runs")', 1,
                          "error: Permission denied (/runs); check the path and its permissions, or write "
                          "elsewhere"),
    "lmlab error": ('LmlabError("no such thing; do this instead")', 2,
                    "error: no such thing; do this instead"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failures_are_one_line_without_debug(case):
    error, code, expected = FAILURES[case]
    r = run_patched(FAILING.format(error=error), "corpora")
    assert one_error_line(r, code) == expected


@pytest.mark.parametrize("case, where", [*((case, "after the command") for case in sorted(FAILURES)),
                                         ("unexpected", "before the command"), ("unexpected", "environment")])
def test_debug_shows_the_traceback(case, where):
    error, code, expected = FAILURES[case]
    args = {"before the command": ["--debug", "corpora"], "after the command": ["corpora", "--debug"],
            "environment": ["corpora"]}[where]
    setup = textwrap.dedent(FAILING.format(error=error))
    if where == "environment":
        setup = "import os\nos.environ['LMLAB_DEBUG'] = '1'\n" + setup
    r = run_patched(setup, *args)
    assert r.returncode == code
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert r.stderr.splitlines()[-1] == expected.removesuffix(" (run again with --debug for the traceback)")


def test_ctrl_c_is_130():
    r = run_patched(FAILING.format(error="KeyboardInterrupt"), "corpora")
    assert r.returncode == 130 and r.stderr == "interrupted\n"
