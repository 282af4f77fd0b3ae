"""Errors name what to change in the caller's terms: ``skip_bad=True`` in Python, ``--skip-bad`` at the terminal."""

from __future__ import annotations

import pickle

import pytest

from tabad.cli import build_parser, command_parser, main, option_flags, terminal_message
from tabad.errors import ConfigError, DataError, TabadError, python_spelling
from tests.conftest import write_tiny_mvtec


@pytest.fixture
def corrupt_mvtec(tmp_path):
    """The tiny MVTec dataset with one training image of ``obj`` that is not an image."""
    root = write_tiny_mvtec(tmp_path / "data")
    bad = root / "obj" / "train" / "good" / "002.png"
    bad.write_bytes(b"not a png")
    return root, bad


def test_corrupt_image_through_the_python_api_says_skip_bad_true(corrupt_mvtec):
    from tabad.datasets.readers import read_category

    root, bad = corrupt_mvtec
    with pytest.raises(DataError) as info:
        read_category(root, "obj")
    message = str(info.value)
    assert str(bad) in message and "pass skip_bad=True" in message and "--skip-bad" not in message
    assert info.value.options == {"skip_bad": True}


def test_corrupt_image_through_the_cli_says_skip_bad_flag(corrupt_mvtec, tmp_path, capsys):
    root, bad = corrupt_mvtec
    rc = main(["benchmark", "--data", str(root), "--categories", "obj", "--out", str(tmp_path / "out"),
               "--resize", "64", "--crop", "56", "--weights", "random"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: {bad}" in err  # still names the file
    assert "pass --skip-bad to leave bad files out" in err
    assert "skip_bad=True" not in err and "Traceback" not in err


def test_flag_table_is_derived_from_argparse():
    parser = build_parser()
    bench = option_flags(command_parser(parser, "benchmark"))
    assert bench["skip_bad"].spell(True) == "--skip-bad"
    assert bench["skip_bad"].spell(False) is None  # no flag turns it off
    assert bench["allow_download"].spell(True) == "--allow-download"
    assert bench["resume"].spell(False) == "--no-resume"  # dest no_resume negates resume
    assert bench["resume"].spell(True) is None
    assert bench["layout"].spell("mvtec") == "--layout mvtec"
    assert bench["weights"].spell(["random", "imagenet"]) == "--weights random,imagenet"
    assert "help" not in bench
    pretrain = option_flags(command_parser(parser, "pretrain"))
    assert pretrain["resume"].spell(True) == "--resume"  # its own flag, not a negation
    assert option_flags(command_parser(parser, "classify"))["image_size"].spell(64) == "--image-size 64"
    assert option_flags(command_parser(parser, "make-data"))["overwrite"].spell(True) == "--overwrite"


def test_terminal_message_rewrites_only_advised_options():
    parser = command_parser(build_parser(), "benchmark")
    exc = DataError("/data/x.png", "unreadable; pass skip_bad=True to skip it", option="skip_bad")
    assert terminal_message(exc, parser) == "/data/x.png: unreadable; pass --skip-bad to skip it"
    assert str(exc) == "/data/x.png: unreadable; pass skip_bad=True to skip it"  # the exception is unchanged
    plain = TabadError("geometry='odd'; choose 'shared' or 'paper'")
    assert terminal_message(plain, parser) == str(plain)  # nothing advised, nothing rewritten
    unknown = ConfigError("pass image_size=64", option={"image_size": 64})
    assert terminal_message(unknown, parser) == "pass image_size=64"  # benchmark has no --image-size
    several = TabadError("pass resume=False or allow_download=True", option={"resume": False, "allow_download": True})
    assert terminal_message(several, parser) == "pass --no-resume or --allow-download"


def test_library_messages_spell_their_options_as_advised():
    """Each option an error advises appears in its message exactly as render() looks for it."""
    from tabad.datasets.reading import raise_problems

    with pytest.raises(DataError) as info:
        raise_problems([("/x/a.png", "not a readable image")], "cat", "")
    for name, value in info.value.options.items():
        assert python_spelling(name, value) in str(info.value)


def test_errors_survive_pickling_with_their_options():
    for exc in (DataError("/x/a.png", "bad; pass skip_bad=True", option="skip_bad"),
                ConfigError("pass image_size=64", option={"image_size": 64}), TabadError("plain")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.options == exc.options
    back = pickle.loads(pickle.dumps(DataError("/x/a.png", "bad")))
    assert back.path.name == "a.png" and back.problem == "bad"
