"""The CLI's answer to bad input and failures, through the real CLI in a subprocess: one line on stderr
naming the problem and the fix, a non-zero exit status, and no traceback unless ``--debug`` asks for it.

Failures a test cannot cause for real (no compiler, a full disk) are forced by a few lines of patching
run in the CLI's own process before :func:`lmlab.cli.main` (see :func:`run_patched`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lmlab.cli import main
from lmlab.train import checkpoint as ckpt
from lmlab.train.log import read_metrics
from tests.conftest import prepare_word_soup, run_cli

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


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """Prepared data, a 4-step run (not at the defaults for log-interval and grad-clip) and bad inputs."""
    root = tmp_path_factory.mktemp("cli-errors")
    data = prepare_word_soup(root)
    run = root / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_PEAK_FLOPS", "1e11")
    try:
        assert main(["pretrain", *TINY, "--data", str(data), "--out", str(run), "--max-steps", "4",
                     "--log-interval", "1", "--grad-clip", "0.5"]) == 0
    finally:
        mp.undo()
    (root / "empty").mkdir()
    (root / "latin1.txt").write_bytes("the fox\ncaf\u00e9 au lait\n".encode("latin-1"))
    (root / "hf").mkdir()
    hf_config = {"model_type": "llama", "vocab_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64}  # no hidden_size
    (root / "hf" / "config.json").write_text(json.dumps(hf_config))
    return {"root": root, "data": data, "run": run, "corpus": root / "corpus.txt", "empty": root / "empty",
            "latin1": root / "latin1.txt", "hf": root / "hf"}


BAD_INPUT = {
    "tokenizer file missing": (
        "data prepare --corpus {corpus} --tokenizer char --out {root}/p1 --tokenizer-file {root}/nope.json",
        "--tokenizer-file {root}/nope.json does not exist"),
    "tokenizer file is a folder": (
        "data prepare --corpus {corpus} --tokenizer char --out {root}/p2 --tokenizer-file {empty}",
        "is a folder without a tokenizer.json"),
    "eval batch size 0": ("eval --ckpt {run} --data {data} --batch-size 0",
                          "--batch-size must be at least 1, got 0"),
    "prompt file not UTF-8": ("generate --ckpt {run} --prompt-file {latin1} --max-new-tokens 2",
                              "is not UTF-8 text (byte 0xe9 on line 2); re-save it as UTF-8"),
    "HF config.json without hidden_size": ("import hf --src {hf} --out {root}/imported",
                                           "config.json of this llama model lacks hidden_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_fix(case, work):
    args, needle = (s.format(**work) for s in BAD_INPUT[case])
    line = one_error_line(run_cli(*args.split(), env=ENV))
    assert needle in line
    assert not (work["root"] / "imported").exists()


def test_compile_failure_in_the_first_step_is_one_line(work, tmp_path):
    out = tmp_path / "run"
    setup = """
        import torch
        real_compile = torch.compile
        def broken(gm, example_inputs):
            raise RuntimeError("no working C++ compiler (forced by the test)")
        torch.compile = lambda model, **kw: real_compile(model, backend=broken)
    """
    r = run_patched(setup, "pretrain", *TINY, "--data", work["data"], "--out", out, "--max-steps", "2",
                    "--compile")
    line = one_error_line(r)
    assert "--compile failed (RuntimeError: no working C++ compiler (forced by the test))" in line
    assert "drop --compile" in line
    assert not out.exists()  # a new run that never saved leaves no folder behind


# How the checkpoint writers fail: after writing part of the file, like a disk filling up.
DISK_FULL = """
    import errno, {module}
    real = {module}.{func}
    calls = {{"n": 0}}
    def full(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] < {fail_at}:
            return real(obj, path, *a, **k)
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
        raise {error}
    {module}.{func} = full
"""
ENOSPC = 'OSError(errno.ENOSPC, "No space left on device")'


@pytest.mark.parametrize("module, func, error, why", [
    ("safetensors.torch", "save_file", ENOSPC, "(No space left on device)"),
    ("torch", "save", 'RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")',
     "(RuntimeError: PytorchStreamWriter failed writing file data/0"),
])
def test_full_disk_keeps_the_last_checkpoint(module, func, error, why, work, tmp_path):
    out = tmp_path / "run"
    setup = DISK_FULL.format(module=module, func=func, fail_at=2, error=error)
    r = run_patched(setup, "pretrain", *TINY, "--data", work["data"], "--out", out, "--max-steps", "8",
                    "--save-interval", "4")
    line = one_error_line(r)
    assert f"could not save the step-8 checkpoint in {out / 'state'} {why}" in line
    assert "it needs about" in line and " free;" in line
    assert "the checkpoint of step 4 is kept intact; free space and continue with --resume" in line
    assert not list((out / "state").glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert ckpt.load_checkpoint(out).step == 4  # complete: sizes and checksums verified
    assert run_cli("pretrain", "--out", out, "--resume", "--max-steps", "8", env=ENV).returncode == 0
    assert ckpt.latest_step(out) == 8


def test_full_disk_at_the_first_save_leaves_no_run_folder(work, tmp_path):
    out = tmp_path / "runs" / "new"
    setup = DISK_FULL.format(module="safetensors.torch", func="save_file", fail_at=1, error=ENOSPC)
    r = run_patched(setup, "pretrain", *TINY, "--data", work["data"], "--out", out, "--max-steps", "2")
    line = one_error_line(r)
    assert "could not save the step-2 checkpoint" in line and "no earlier checkpoint exists" in line
    assert not out.exists() and (tmp_path / "runs").is_dir()


def test_resume_drops_a_half_written_metrics_line_with_a_warning(work, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(work["run"], out)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 5, "loss": 2.7')  # the process died mid-write
    r = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "6", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    [warning] = r.stderr.splitlines()
    assert warning.startswith("warning: ") and "half-written last line" in warning
    assert [rec["step"] for rec in read_metrics(out)] == list(range(1, 7))


def test_resume_keeps_options_given_explicitly_even_at_their_defaults(work, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(work["run"], out)
    (tmp_path / "c.yaml").write_text("grad_clip: 1.0\n")  # the default, given in YAML
    r = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "5", "--log-interval", "10",
                "--config", tmp_path / "c.yaml", env=ENV)
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["log_interval"] == 10 and saved["optim"]["grad_clip"] == 1.0
    assert saved["d_model"] == 32 and saved["batch_size"] == 4  # not given: the run's own
    # a resumed run keeps options it was not given...
    r = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "6", env=ENV)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["log_interval"] == 10


def test_no_fsdp_resumes_an_fsdp_run(work, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(work["run"], out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**config, "fsdp": True}))  # as if run under torchrun
    line = one_error_line(run_cli("pretrain", "--out", out, "--resume", "--max-steps", "5", env=ENV))
    assert "--fsdp needs several processes" in line  # inherited: --fsdp is the run's setting
    r = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "5", "--no-fsdp", env=ENV)
    assert r.returncode == 0, r.stderr
    assert ckpt.latest_step(out) == 5


def test_list_values_with_commas_survive_parsing(cli):
    r = cli("pretrain", "--model-args", 'rope_scaling={"rope_type":"linear","factor":2.0},rope_theta=20000',
            "--model-args", "norm_eps=1e-5", "--print-config")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["model_args"] == [
        'rope_scaling={"rope_type":"linear","factor":2.0}', "rope_theta=20000", "norm_eps=1e-5"]
    r = cli("generate", "--stop", r"Yours\, truly,THE END", "--stop", "\\n\\n", "--print-config")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["stop"] == ["Yours, truly", "THE END", "\\n\\n"]


def test_model_args_with_commas_reach_the_model(work, tmp_path):
    out = tmp_path / "run"
    r = run_cli("pretrain", *TINY, "--data", work["data"], "--out", out, "--max-steps", "1",
                "--model-args", 'rope_scaling={"rope_type":"linear","factor":2.0},rope_theta=20000', env=ENV)
    assert r.returncode == 0, r.stderr
    model_config = ckpt.load_checkpoint(out).trainer_state["model_config"]
    assert model_config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert model_config["rope_theta"] == 20000
