from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from lmlab.cli import main
from lmlab.config import arg, build_config, load_yaml, save_config, to_dict
from lmlab.errors import LmlabError


@dataclass
class Demo:
    name: str = arg("x", "a name")
    steps: int = arg(10, "steps")
    lr: float = arg(3e-4, "learning rate")
    fast: bool = arg(False, "go fast")
    kind: Literal["a", "b"] = arg("a", "kind")
    sizes: list[int] = arg([1, 2], "sizes")
    out: Path | None = arg(None, "output")


def test_build_config_coerces_types_and_spellings():
    cfg = build_config(Demo, {"steps": "1e3", "lr": "0.1", "fast": "true", "sizes": "4,8", "out": "o"})
    assert (cfg.steps, cfg.lr, cfg.fast, cfg.sizes, cfg.out) == (1000, 0.1, True, [4, 8], Path("o"))
    assert build_config(Demo, {"steps": 5.0}).steps == 5
    assert build_config(Demo, {"out": "none"}).out is None


@pytest.mark.parametrize("values, needle", [
    ({"nope": 1}, "unknown option 'nope'"),
    ({"steps": "ten"}, "steps='ten' is not a valid int"),
    ({"steps": 2.5}, "not a valid int"),
    ({"kind": "c"}, "is not one of a, b"),
    ({"fast": "maybe"}, "not a valid bool"),
])
def test_build_config_rejects_bad_values(values, needle):
    with pytest.raises(LmlabError, match=needle):
        build_config(Demo, values)


def test_mutable_defaults_are_not_shared():
    a, b = Demo(), Demo()
    a.sizes.append(3)
    assert b.sizes == [1, 2]


def test_yaml_round_trip(tmp_path):
    cfg = build_config(Demo, {"steps": 7, "out": "runs/x"})
    save_config(cfg, tmp_path / "c.yaml")
    assert build_config(Demo, load_yaml(tmp_path / "c.yaml")) == cfg
    assert to_dict(cfg)["out"] == "runs/x"


def test_bad_yaml_files(tmp_path):
    with pytest.raises(LmlabError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(LmlabError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(LmlabError, match="not valid YAML"):
        load_yaml(tmp_path / "broken.yaml")


def test_cli_config_file_and_overrides(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("vocab-size: 300\ntokenizer: char\nval_fraction: 0.25\n")
    assert main(["data", "prepare", "--config", str(tmp_path / "c.yaml"), "--vocab-size", "512",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "vocab_size: 512" in out  # the flag wins over the file
    assert "tokenizer: char" in out and "val_fraction: 0.25" in out


def test_cli_unknown_yaml_key_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("vocab: 300\n")
    assert main(["data", "prepare", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "unknown option 'vocab'" in capsys.readouterr().err


@dataclass
class Group:
    lr: float = arg(1e-3, "learning rate")
    warmup: int = arg(100, "warmup steps")


@dataclass
class WithGroup:
    steps: int = arg(10, "steps")
    optim: Group = arg(Group(lr=3e-3), "the optimizer options")


def test_option_groups_flat_nested_flags_and_saved_nested(tmp_path):
    import argparse

    from lmlab.config import add_config_arguments, parse_config

    assert build_config(WithGroup, {}).optim == Group(lr=3e-3)  # the command's own default group
    assert build_config(WithGroup, {"lr": "0.5"}).optim == Group(lr=0.5)  # flat, as old saved configs
    assert build_config(WithGroup, {"optim": {"warmup": 7}}).optim == Group(lr=3e-3, warmup=7)
    with pytest.raises(LmlabError, match="unknown option .nope."):
        build_config(WithGroup, {"nope": 1})
    with pytest.raises(LmlabError, match="group of options"):
        build_config(WithGroup, {"optim": 3})
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, WithGroup)
    assert "(default: 0.003)" in parser.format_help()  # the group's flags show the command's defaults
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 0.25\n  warmup: 3\n")
    cfg = parse_config(WithGroup, parser.parse_args(["--config", str(yaml_file), "--lr", "0.125"]))
    assert cfg.optim == Group(lr=0.125, warmup=3)  # flags beat YAML, field by field
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_yaml(tmp_path / "saved.yaml")["optim"] == {"lr": 0.125, "warmup": 3}
    assert build_config(WithGroup, load_yaml(tmp_path / "saved.yaml")) == cfg
    assert WithGroup().optim is not WithGroup().optim  # each config gets its own group


def _parse(cls: type, *argv: str):
    import argparse

    from lmlab.config import add_config_arguments, parse_config

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return parse_config(cls, parser.parse_args(list(argv)))


def test_explicit_options_are_recorded_even_at_their_defaults(tmp_path):
    from lmlab.config import explicit_options

    (tmp_path / "c.yaml").write_text("optim: {warmup: 100}\n")
    cfg = _parse(WithGroup, "--steps", "10", "--config", str(tmp_path / "c.yaml"))
    assert cfg == WithGroup()
    assert explicit_options(cfg) == {"steps", "warmup"}
    assert explicit_options(_parse(WithGroup)) == frozenset()
    assert explicit_options(WithGroup()) is None  # made in code: unknown


@pytest.mark.parametrize("text, key_values, items", [
    ("a,b,,c ", False, ["a", "b", "c"]),
    (r"Yours\, truly,END", False, ["Yours, truly", "END"]),
    ("", False, []),
    ('scaling={"factor":8,"type":"linear"},theta=5e5', True,
     ['scaling={"factor":8,"type":"linear"}', "theta=5e5"]),
    ("layers=[1,2,3], name=a,b", True, ["layers=[1,2,3]", "name=a,b"]),
    (r"name=a\,b=c,x=1", True, ["name=a,b=c", "x=1"]),
])
def test_split_items(text, key_values, items):
    from lmlab.config import split_items

    assert split_items(text, key_values) == items


@dataclass
class Lists:
    stop: list[str] = arg([], "stop strings")
    model_args: list[str] = arg([], "KEY=VALUE items", key_values=True)


def test_list_flags_repeat_escape_and_split_key_values(tmp_path):
    cfg = _parse(Lists, "--stop", r"a\,b,c", "--stop", "d", "--model-args", "x=[1,2],y=z",
                 "--model-args", "w=1")
    assert cfg.stop == ["a,b", "c", "d"]
    assert cfg.model_args == ["x=[1,2]", "y=z", "w=1"]
    (tmp_path / "c.yaml").write_text("stop: ['p,q']\nmodel_args: 'k={\"a\": 1, \"b\": 2},j=3'\n")
    cfg = _parse(Lists, "--config", str(tmp_path / "c.yaml"))
    assert cfg.stop == ["p,q"]  # a YAML list is taken as it is
    assert cfg.model_args == ['k={"a": 1, "b": 2}', "j=3"]
