"""``pqcad-train``: one entry point, one subcommand per training stage."""

from __future__ import annotations

import sys

from pqcad_deploy.cli.common import add_verbose, make_parser, run_cli, setup_logging

from . import calib, classifier, personalize, pqcad, ptq, style, style_classifier, teacher

STAGES = (teacher, classifier, style_classifier, calib, ptq, pqcad, personalize, style)


def build_parser():
    p = make_parser(
        "pqcad-train",
        "Train the FP teacher, the feature classifier, calibration sets, PTQ baselines, PQCAD students and "
        "personalization patches.",
    )
    add_verbose(p)
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        stage.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("pqcad-train", _run_stage, args)


def _run_stage(args) -> int:
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
