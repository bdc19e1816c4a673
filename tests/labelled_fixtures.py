"""A fake VADER archive (the layout of ``hutto_ICWSM_2014.tar.gz``, made-up sentences) for tests that
must not download: point ``LMLAB_SENTIMENT_ARCHIVE`` at :func:`fake_sentiment_archive`'s file."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

POSITIVE = "good great lovely wonderful superb fine happy brilliant".split()
NEGATIVE = "bad awful terrible boring dull poor sad horrible".split()
FILLER = "the film movie plot story was is a an and very".split()
STEMS = ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets")


def sentiment_lines(n: int, seed: int, grouped: bool) -> list[str]:
    """``n`` lines ``id<TAB>rating<TAB>text``: positive words for ratings >= 0.5, negative ones for
    ratings <= -0.5, fillers only for neutral ones; ids ``doc_sentence`` when ``grouped``."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        rating = round(rng.uniform(-4, 4), 3)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        if rating >= 0.5:
            words.insert(rng.randrange(len(words)), rng.choice(POSITIVE))
        elif rating <= -0.5:
            words.insert(rng.randrange(len(words)), rng.choice(NEGATIVE))
        words.append(f"w{i}")  # distinct texts
        ident = f"{i // 5 + 1}_{i % 5 + 1}" if grouped else str(i + 1)
        lines.append(f"{ident}\t{rating}\t{' '.join(words)}")
    return lines


def fake_sentiment_archive(folder: Path, n: int = 200) -> Path:
    """Write ``folder/hutto_ICWSM_2014.tar.gz`` holding the four ``*_GroundTruth.txt`` files (CRLF,
    UTF-8) and a decoy script; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hutto_ICWSM_2014.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for k, stem in enumerate(STEMS):
            data = "\r\n".join(sentiment_lines(n, k, grouped=stem.startswith(("amazon", "nyt")))).encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        script = b"raise SystemExit('never run')\n"
        info = tarfile.TarInfo("hutto_ICWSM_2014/vaderSentiment.py")
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
    return path
