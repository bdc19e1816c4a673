import pytest

from lmlab.cli import COMMANDS, main


def test_top_level_help_lists_every_command(cli):
    r = cli("--help")
    assert r.returncode == 0
    for words in COMMANDS:
        assert words in r.stdout


@pytest.mark.parametrize("words", sorted(COMMANDS))
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--print-config" in out


def test_group_help_and_unknown_commands(capsys):
    assert main(["data"]) == 0
    assert "data prepare" in capsys.readouterr().out
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert main(["data", "nonsense"]) == 2
    assert "lmlab data nonsense" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lmlab ")


def test_a_command_that_is_also_a_group_names_its_related_commands(capsys):
    with pytest.raises(SystemExit):
        main(["icl", "--help"])
    assert "related commands: 'lmlab icl emergence', 'lmlab icl induction'" in capsys.readouterr().out
