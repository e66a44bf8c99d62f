"""The `c123` console script: the method's commands (c123.cli: reconstruct, models) and the pipeline's
(evaluate, report, history, fetch). The pipeline's modules are imported only when their command runs, so
`c123 reconstruct` never loads Prefect or Ray."""

from __future__ import annotations

import argparse
import sys

from c123 import cli as method_cli


def _evaluate(args: argparse.Namespace) -> int:
    from c123_pipeline.flows.evaluate import evaluate_command

    return evaluate_command(args)


def _report(args: argparse.Namespace) -> int:
    from c123_pipeline.reports.build import main

    return main(args.rest)


def _history(args: argparse.Namespace) -> int:
    from c123_pipeline.reports.history import main

    return main(args.rest)


def _fetch(args: argparse.Namespace) -> int:
    from c123_pipeline.datasets.fetch import main

    return main(args.rest)


COMMANDS = (("evaluate", "run the benchmark flow on a dataset", _evaluate),
            ("report", "tables, plots and HTML from run folders", _report),
            ("history", "every run of a dataset under a runs folder: table and one Parquet", _history),
            ("fetch", "download a benchmark dataset", _fetch))


def add_pipeline_commands(sub) -> None:
    """evaluate, report, history and fetch; each parses its own arguments (args.rest)."""
    for name, text, run in COMMANDS:
        sub.add_parser(name, help=text, add_help=False).set_defaults(run=run, takes_rest=True)


def main(argv: list[str] | None = None) -> int:
    return method_cli.main(argv, add_pipeline_commands)


if __name__ == "__main__":
    sys.exit(main())
