"""lmlab.fileio.replace_folder: a finished folder takes the place of an old one, which survives a
failed rename."""

from __future__ import annotations

import os

import pytest

from lmlab.fileio import replace_folder


def folder(path, text: str):
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


def test_the_new_folder_replaces_the_old_and_nothing_is_left_beside_it(tmp_path):
    out = folder(tmp_path / "run", "old")
    replace_folder(folder(tmp_path / ".run.new", "new"), out)
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    replace_folder(folder(tmp_path / ".run.new2", "newer"), tmp_path / "fresh")  # no old folder
    assert (tmp_path / "fresh" / "a.txt").read_text() == "newer"


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = folder(tmp_path / "run", "old")
    new = folder(tmp_path / ".run.new", "new")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        replace_folder(new, out)
    assert (out / "a.txt").read_text() == "old" and new.is_dir()
