"""How the CLI reports what a user got wrong in a config: one `error:` line, exit 2, no traceback
(EFFICIENTDL_DEBUG=1 shows it), for every method alike; `--quiet`/`--verbose` after any
sub-command. Run as a user would: `python -m efficientdl.cli` in a temporary folder.

Each CLI start costs ~2 s (importing torch), so the cases of one rule run two at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import assert_one_error, run_cli
from efficientdl.core.recipes import list_recipes

TRAIN_COMMANDS = [("snn", "train"), ("ke", "train"), ("adashare", "warmup")]
RECIPES = {"snn": "mnist_cnn", "ke": "ke/digits_small", "adashare": "adashare/procedural_demo"}

# a malformed recipe: the second colon of line 3 is its 10th character
BAD_YAML = "# a recipe\nseed: 0\nepochs: 2: 3\n"
BAD_AT = "3:10: mapping values are not allowed here"


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def run_all(commands, **kwargs):
    """`run_cli` for each argument tuple, two at a time → [(args, CompletedProcess)]."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda args: run_cli(*args, **kwargs), commands))
    return list(zip(commands, procs))


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    return path


def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path, bad_yaml):
    # every training command, with --quiet or --verbose after the sub-command: argparse would
    # stop at an unknown option ("unrecognized arguments") before reading the config, so the
    # YAML error also shows that the flag was accepted
    commands = [
        ("snn", "train", "--config", "bad.yaml", "--run-dir", "r1", "--quiet"),
        ("ke", "train", "--config", bad_yaml, "--run-dir", "r2", "--verbose"),
        ("adashare", "warmup", "--config", "bad.yaml", "--run-dir", "r3"),
    ]
    for args, proc in run_all(commands, cwd=tmp_path):
        assert "unrecognized arguments" not in proc.stderr, (args, proc.stderr)
        line = assert_one_error(proc)
        assert line == f"error: {args[3]}:{BAD_AT}", (args, line)
    assert files_under(tmp_path) == ["bad.yaml"]  # no failed start left anything behind
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def test_every_sub_command_accepts_quiet_and_verbose():
    from efficientdl.cli import _leaf_parsers, build_parser

    parser = build_parser()
    leaves = [leaf for leaf in _leaf_parsers(parser) if leaf is not parser]
    assert len(leaves) >= 10
    for leaf in leaves:
        options = {o for action in leaf._actions for o in action.option_strings}
        assert {"--quiet", "--verbose"} <= options, leaf.prog
    for command in TRAIN_COMMANDS:
        for flag, level in (("--quiet", "quiet"), ("--verbose", "verbose")):
            args = parser.parse_args([*command, "--config", "x", flag])
            assert args.verbosity == level, (command, flag)
            args = parser.parse_args([flag, *command, "--config", "x"])
            assert args.verbosity == level, (command, flag)  # before the command as well
        assert parser.parse_args([*command, "--config", "x"]).verbosity == "normal"


def test_debug_shows_the_traceback(tmp_path, bad_yaml):
    commands = [(*TRAIN_COMMANDS[1], "--config", "bad.yaml", "--run-dir", "r"), ("configs", "x")]
    (config, proc), (_, usage) = run_all(commands, cwd=tmp_path, env={"EFFICIENTDL_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert f"ConfigError: bad.yaml:{BAD_AT}" in proc.stderr
    # a usage error stays argparse's (exit 2, no traceback) with the flag set too
    assert usage.returncode == 2 and "invalid choice: 'x'" in usage.stderr
    assert "Traceback" not in usage.stderr


def test_verbosity_flags_before_and_after_the_configs_command(tmp_path):
    commands = [("--quiet", "configs", "ke"), ("configs", "snn", "--verbose")]
    for args, proc in run_all(commands, cwd=tmp_path):
        assert proc.returncode == 0, (args, proc.stderr)
        method = "ke" if "ke" in args else "snn"
        assert proc.stdout.split() == list_recipes(method), args
    proc = run_cli("configs", "--quiet", "--verbose", cwd=tmp_path)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_set_key_is_one_line_naming_it(tmp_path):
    cases = {"snn": ("lrr", "TSSLBPRecipe"), "ke": ("epochz", "KEConfig"),
             "adashare": ("train.lrr", "TrainConfig")}  # fmt: skip
    commands = [
        (*command, "--config", RECIPES[command[0]], "--set", f"{cases[command[0]][0]}=1",
         "--run-dir", "r", "--quiet")
        for command in TRAIN_COMMANDS
    ]  # fmt: skip
    for args, proc in run_all(commands, cwd=tmp_path):
        key, cls = cases[args[0]]
        line = assert_one_error(proc, f"unknown config key '{key}'", cls)
        assert "known keys:" in line, (args, line)
    assert files_under(tmp_path) == []


def test_a_malformed_set_value_and_an_unknown_recipe_are_one_line(tmp_path):
    commands = [
        ("snn", "train", "--config", "mnist_cnn", "--set", "seed=[1, 2", "--run-dir", "r"),
        ("ke", "train", "--config", "digits_smal", "--run-dir", "r"),
    ]
    (_, bad_value), (_, unknown) = run_all(commands, cwd=tmp_path)
    line = assert_one_error(bad_value)
    assert line.startswith("error: --set seed:1:"), line
    line = assert_one_error(unknown, "--config digits_smal", "packaged:", "digits_small")
    assert "mnist_cnn" not in line  # only KE's own recipes
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["snn", "train", "--bogus"], "unrecognized arguments: --bogus"),
        (["adashare", "baseline"], "the following arguments are required: --name"),
        (["ke", "bench", "--input-size", "abc"], "argument --input-size: invalid int value"),
    ],
)
def test_command_line_mistakes_are_one_line(argv, fragment, capsys):
    from efficientdl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: efficientdl") and fragment in err[0], err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (
            ["ke", "bench", "--config", "ke/demo", "--set", "lr=5"],
            "ke bench cannot honour --set lr",
        ),
        (
            ["snn", "bench", "--config", "mnist_cnn", "--set", "epochs=3"],
            "snn bench cannot honour --set epochs",
        ),
    ],
)
def test_a_bench_refuses_an_override_it_would_ignore(argv, fragment, capsys):
    from efficientdl.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_refuse_unread_names_the_first_key_outside_what_is_read():
    from efficientdl.core.config import refuse_unread
    from efficientdl.core.errors import ConfigError

    refuse_unread(["a=1", "b.c=2"], reads=("a", "b"), command="x")  # all read: no error
    with pytest.raises(ConfigError, match=r"x cannot honour --set d: it reads only a, b"):
        refuse_unread(["a=1", "d=2", "e=3"], reads=("b", "a"), command="x")
