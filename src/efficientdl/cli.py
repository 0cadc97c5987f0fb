"""The `efficientdl` command line: one sub-command per method plus `data`."""

from __future__ import annotations

import argparse
import sys

from efficientdl.core.config import ConfigError


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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands registered by each method's cli module)."""
    from efficientdl.adashare import cli as adashare_cli
    from efficientdl.knowledge_evolution import cli as ke_cli
    from efficientdl.snn import cli as snn_cli

    parser = argparse.ArgumentParser(prog="efficientdl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data_parser = sub.add_parser("data", help="fetch or list datasets")
    data_sub = data_parser.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset into the data cache")
    fetch.add_argument("name", help="mnist or fashion-mnist")
    fetch.add_argument("--dest", default=None, help="cache folder (default $EFFICIENTDL_DATA)")
    data_sub.add_parser("list", help="show which datasets are available locally")
    data_parser.set_defaults(func=_data_command)
    report = sub.add_parser("report", help="combine run folders' report.md into one file")
    report.add_argument("run_dirs", nargs="+", help="run folders, each with a report.md")
    report.add_argument("--out", required=True, help="the combined Markdown file")
    report.set_defaults(func=_report_command)
    snn_cli.register(sub)
    adashare_cli.register(sub)
    ke_cli.register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the `efficientdl` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"efficientdl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
