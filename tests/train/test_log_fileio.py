import json
import os

import pytest

from lmlab.fileio import atomic_path, write_json, write_text
from lmlab.train.log import RunLogger, read_metrics


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    write_text(target, "old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-")
            raise OSError("No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's owner-only 0600


def test_run_logger_appends_and_resume_drops_later_steps(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, loss=1.0 / step, lr=0.1, nan=float("nan"))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["nan"] == "nan" and "time" in records[0]
    with RunLogger(tmp_path, resume_step=3, tensorboard=False) as log:
        log.log(4, loss=0.2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    RunLogger(tmp_path, tensorboard=False).close()
    assert read_metrics(tmp_path) == []  # a fresh run starts a fresh file
