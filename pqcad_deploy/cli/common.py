"""What every command shares: the error contract, signal handling, logging, and the flags that name one knob.

``run_cli`` is the one place that turns an expected failure into a single line on stderr: a
:class:`~pqcad_deploy.errors.PQCADError` or an ``OSError`` (full disk, permissions) exits 2, Ctrl-C exits 130 and
SIGTERM 143, each after ``finally`` blocks removed temporary files. ``-v`` adds the traceback. Anything else is a bug
and keeps its traceback.

Flag vocabulary (the same spelling in every command): ``--device {auto,cpu,cuda}``, ``--batch-size``,
``--num-samples``, ``--json PATH``, ``-v/--verbose``, and one calibration-set group
(``--calib``, ``--calib-trajectories``, ``--calib-steps``, ``--calib-points``, ``--calib-batch-size``,
``--calib-seed``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import Interrupted, OutputPathError, PQCADError, UsageError
from ..io import artefact_files

# Calibration-set defaults shared by `pqcad-train calib`, `ptq` and `pqcad`. Sized so that a 2-core CPU collects
# the set in about a minute on the shipped teacher; the GPU recipes in the README ask for more.
CALIB_DEFAULTS = {"trajectories": 64, "steps": 100, "points": 20, "batch_size": 64, "seed": 1234}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every help line, and descriptions/epilogs kept as written."""


def make_parser(prog: str, description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter
    )


def add_subcommand(sub: Any, name: str, help: str, description: str | None) -> argparse.ArgumentParser:
    """A subcommand parser with the same help formatting as its parent (argparse does not inherit it); ``-v``
    works before or after the subcommand."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return p


def check_output_path(
    path: str | Path, inputs: list[Any] = (), what: str = "--out", outputs: list[Any] = ()
) -> Path:
    """Validate an output location before any work: not a directory, not one of the command's inputs nor a file
    that belongs to one (a sidecar, external data: writing it would destroy what the command reads), and a writable
    folder (created when missing). ``outputs``: the command's other outputs, which must be other files."""
    out = Path(path)
    if out.is_dir():
        raise OutputPathError(f"{what} {out} is a directory; give a file path.")
    written = {p.resolve(): p for p in artefact_files(out)}
    for src in inputs:
        for part in artefact_files(Path(src)) if src is not None else ():
            if part.exists() and part.resolve() in written:
                mine = written[part.resolve()]
                clash = "is" if mine == out else f"writes {mine}, which is"
                whose = "" if part.resolve() == Path(src).resolve() else f" (it belongs to {src})"
                raise OutputPathError(
                    f"{what} {out} {clash} also an input of this command{whose}; choose another output path."
                )
    for other in outputs:
        if other is not None and Path(other).resolve() in written:
            raise OutputPathError(
                f"{what} {out} is also written as another output of this command ({other})."
            )
    parent = out.parent if str(out.parent) else Path(".")
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputPathError(f"{what} {out}: {blocker} is a file, not a folder; choose another path.")
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise OutputPathError(f"{what} {out}: cannot create folder {parent} ({e.strerror}).") from e
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{what} {out}: the folder {parent} is not writable; choose another {what}.")
    return out


def refuse_bad_outputs(
    p: argparse.ArgumentParser, outputs: dict[str, str | Path | None], inputs: list[Any] = ()
) -> None:
    """``check_output_path`` on a script's output flags at parse time (flag -> path, None skipped; no two the same
    file), as a usage error: a benchmark must not run for an hour and then fail at its last write."""
    for flag, path in outputs.items():
        if path is not None:
            others = [q for f, q in outputs.items() if f != flag]
            try:
                check_output_path(path, inputs=list(inputs), what=flag, outputs=others)
            except OutputPathError as e:
                p.error(str(e))


# ---------------------------------------------------------------- typed flag values
def _number(kind: type, lo: float | None, hi: float | None, lo_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi:g}, got {text}")
        return v

    parse.__name__ = kind.__name__
    return parse


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse ``type=`` for an integer in [lo, hi]; argparse names the flag in its message."""
    return _number(int, lo, hi)


def float_range(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> Callable[[str], float]:
    return _number(float, lo, hi, lo_open)


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
nonneg_float = float_range(0.0)

# Upper bounds that keep every count inside what torch, numpy and ONNX Runtime accept (a huge value is refused
# with the flag named instead of overflowing deep inside a library).
MAX_SEED = 2**32 - 1
MAX_STEPS = 100_000  # sampler steps; the model's training timesteps bound them further (sampling.check_steps)
MAX_BATCH = 65_536
MAX_THREADS = 1024
MAX_COUNT = 10**9  # optimizer steps, intervals, repeats
seed_int = int_range(0, MAX_SEED)
steps_int = int_range(1, MAX_STEPS)
batch_int = int_range(1, MAX_BATCH)
threads_int = int_range(1, MAX_THREADS)
count_int = int_range(1, MAX_COUNT)


# ---------------------------------------------------------------- shared flags
def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback on errors")


def add_device(p: argparse.ArgumentParser | Any, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N",
    )


def resolve_device(text: str | None) -> torch.device:
    """``auto``/None -> cuda if available else cpu; refuses CUDA on a machine without it."""
    if text in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: this machine has no CUDA device; use --device cpu (or auto).")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: only cpu and cuda are supported.")
    return dev


def add_json(p: argparse.ArgumentParser | Any, what: str = "the results") -> None:
    p.add_argument("--json", type=Path, metavar="PATH", default=None, help=f"also write {what} as JSON here")


def add_calib_args(p: argparse.ArgumentParser, *, with_path: bool = True, title: str | None = None) -> None:
    """The one calibration-set group (FP DDIM trajectories, evenly spaced points of each)."""
    g = p.add_argument_group(title or "calibration set (FP trajectories of the teacher)")
    if with_path:
        g.add_argument(
            "--calib",
            type=Path,
            default=None,
            help="saved calibration set (pqcad-train calib); collected now if not given (saved there if missing)",
        )
    d = CALIB_DEFAULTS
    g.add_argument(
        "--calib-trajectories", type=int_range(1, 10**7), default=d["trajectories"], help="FP trajectories"
    )
    g.add_argument(
        "--calib-steps",
        type=int_range(2, MAX_STEPS),
        default=d["steps"],
        help="DDIM steps of each trajectory",
    )
    g.add_argument(
        "--calib-points",
        type=steps_int,
        default=d["points"],
        help="evenly spaced steps kept per trajectory",
    )
    g.add_argument(
        "--calib-batch-size", type=batch_int, default=d["batch_size"], help="trajectories sampled at once"
    )
    g.add_argument("--calib-seed", type=seed_int, default=d["seed"], help="noise seed of the trajectories")
    g.add_argument(
        "--calib-prompts",
        type=Path,
        default=None,
        help="text-to-image: prompts the trajectories draw from, one per line (e.g. the styled prompts a deployment "
        "runs); default: the testbed's training captions",
    )


def add_text_args(p: argparse.ArgumentParser, guidance: bool = True) -> None:
    """Prompt states of text-to-image models: the caption embedding cache or a text encoder, and the CFG scale."""
    from ..conditioning import DEFAULT_GUIDANCE

    g = p.add_argument_group("text-to-image models (ignored for unconditional ones)")
    g.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="caption embedding cache (python -m pqcad_deploy.text OUT.safetensors); needed on machines without "
        "the text encoder",
    )
    g.add_argument(
        "--text-encoder",
        default=None,
        help="BERT-style encoder folder (default: the installed all-MiniLM-L6-v2 wheel); used when --embeddings "
        "is not given",
    )
    if guidance:
        g.add_argument(
            "--guidance-scale",
            type=float_range(0.0, 100.0),
            default=DEFAULT_GUIDANCE,
            help="classifier-free guidance scale (1: no guidance, one UNet call per step)",
        )


def calib_collect_kwargs(args: argparse.Namespace) -> dict[str, int]:
    """``collect_calibset`` keyword arguments from the shared group."""
    return {
        "n_trajectories": args.calib_trajectories,
        "steps": args.calib_steps,
        "n_points": args.calib_points,
        "batch_size": args.calib_batch_size,
        "seed": args.calib_seed,
    }


def setup_logging(verbose: bool, quiet_default: bool = False) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet_default else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


# ---------------------------------------------------------------- the error contract
def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_cli(prog: str, main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run ``main(args)`` under the error contract; returns the process exit code."""
    verbose = bool(getattr(args, "verbose", False))
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C); nothing half-written was left behind", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 143 if e.signal_name == "SIGTERM" else 130
    except PQCADError as e:
        _report(prog, str(e), verbose)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _report(
            prog,
            f"{e.strerror or e}{where}; check the path, its permissions and the free disk space",
            verbose,
        )
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(prog: str, message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
