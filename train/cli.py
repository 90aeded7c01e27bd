"""``pqcad-train``: one entry point, one subcommand per training stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module exposes ``register(subparsers)``; a stage that is not installed yet is skipped quietly.
_STAGES = ("teacher", "classifier", "ptq", "calib", "pqcad")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pqcad-train",
        description="Train the FP teacher, the feature classifier, PTQ baselines, calibration sets and PQCAD students.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in _STAGES:
        try:
            mod = importlib.import_module(f"pqcad_deploy.train.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("pqcad_deploy.train."):
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
        logging.getLogger("pqcad-train").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
