"""Fixtures the fine-tuning tests share: a fake sentiment archive (the real sdist's layout) and the
environment that points lmlab at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.labelled_fixtures import fake_sentiment_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A fake vaderSentiment archive with 160 sentences per set."""
    return fake_sentiment_archive(tmp_path_factory.mktemp("vader"), n=160)


@pytest.fixture
def sentiment_env(archive, monkeypatch) -> None:
    """Point the sentiment sets at ``archive`` and fix the MFU peak (no measuring in tests)."""
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(archive))
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
