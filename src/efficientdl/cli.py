"""The `efficientdl` command line: one sub-command per method plus `data`, `configs`, `list`,
`report`.

A user's mistake (bad config, missing or corrupt data, an unusable run folder, a diverging run)
prints one `error: …` line on stderr and exits 2; `EFFICIENTDL_DEBUG=1` shows the traceback.
Ctrl-C exits 130 and prints the command that continues the run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from efficientdl.core.distributed import is_main_process
from efficientdl.core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _data_command(args) -> int:
    from efficientdl import data

    if args.action == "fetch":
        path = data.fetch(args.name, dest=args.dest)
        print(f"{args.name}: {path}")
    else:
        for name, status in data.available():
            print(f"{name:15s} {status}")
    return 0


def _report_command(args) -> int:
    from efficientdl.core.report import combine_reports

    print(combine_reports(args.run_dirs, args.out))
    return 0


def _configs_command(args) -> int:
    from efficientdl.core.recipes import list_recipes

    for name in list_recipes(args.method):
        print(name)
    return 0


_LISTED_KINDS = {"models": ("model", "snn"), "datasets": ("dataset",), "baselines": ("baseline",)}


def _list_command(args) -> int:
    """Print the registry entries of `args.what` (name, kind, input shape, doc), or the recipes."""
    from efficientdl.core import registry
    from efficientdl.core.recipes import list_recipes

    if args.what == "recipes":
        print("\n".join(list_recipes()))
        return 0
    for kind in _LISTED_KINDS[args.what]:
        for entry in registry.entries(kind):
            shape = "×".join(map(str, entry.input_shape)) if entry.input_shape else "-"
            print(f"{entry.name:16s} {kind:8s} {shape:12s} {entry.doc}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one `error: …` line (exit 2), like every user error;
    sub-command parsers inherit the class."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser of the tree that has no sub-commands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(child)


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet", dest="verbosity", action="store_const", const="quiet", default=default,
        help="show warnings and errors only",
    )  # fmt: skip
    group.add_argument(
        "--verbose", dest="verbosity", action="store_const", const="verbose", default=default,
        help="also show debug messages",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands registered by each method's cli module)."""
    from efficientdl.adashare import cli as adashare_cli
    from efficientdl.knowledge_evolution import cli as ke_cli
    from efficientdl.snn import cli as snn_cli

    parser = _Parser(prog="efficientdl", description=__doc__)
    _add_verbosity(parser, "normal")
    sub = parser.add_subparsers(dest="command", required=True)
    data_parser = sub.add_parser("data", help="fetch or list datasets")
    data_sub = data_parser.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset into the data cache")
    fetch.add_argument("name", help="mnist, fashion-mnist or digits")
    fetch.add_argument("--dest", default=None, help="cache folder (default $EFFICIENTDL_DATA)")
    data_sub.add_parser("list", help="show which datasets are available locally")
    data_parser.set_defaults(func=_data_command)
    configs = sub.add_parser("configs", help="list the recipes shipped in the package")
    configs.add_argument("method", nargs="?", choices=("snn", "ke", "adashare"), default=None)
    configs.set_defaults(func=_configs_command)
    lister = sub.add_parser(
        "list", help="list the registered models, datasets or baselines, or the recipes"
    )
    lister.add_argument("what", choices=("models", "datasets", "recipes", "baselines"))
    lister.set_defaults(func=_list_command)
    report = sub.add_parser("report", help="combine run folders' report.md into one file")
    report.add_argument("run_dirs", nargs="+", help="run folders, each with a report.md")
    report.add_argument("--out", required=True, help="the combined Markdown file")
    report.set_defaults(func=_report_command)
    snn_cli.register(sub)
    adashare_cli.register(sub)
    ke_cli.register(sub)
    for leaf in _leaf_parsers(parser):
        if leaf is not parser:
            _add_verbosity(leaf, argparse.SUPPRESS)
    return parser


def resume_command(argv: list[str], run_dir=None) -> str:
    """The command line that continues an interrupted run: this one, with `--resume` (and
    `--run-dir RUN_DIR` when it had none, as when the run went to its default folder)."""
    words = ["efficientdl", *argv]
    has_run_dir = any(w == "--run-dir" or w.startswith("--run-dir=") for w in argv)
    if run_dir is not None and not has_run_dir:
        words += ["--run-dir", str(run_dir)]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)


def main(argv=None) -> int:
    """Entry point of the `efficientdl` console script."""
    from efficientdl.core.log import configure

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    configure(args.verbosity, is_main=is_main_process())
    debug = os.environ.get("EFFICIENTDL_DEBUG", "") not in ("", "0")
    try:
        return args.func(args) or 0
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        if is_main_process():
            if getattr(args, "resumable", False) and getattr(args, "run_dir", None):
                command = resume_command(argv, run_dir=args.run_dir)
                print(f"interrupted; continue with: {command}", file=sys.stderr)
            else:
                print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
