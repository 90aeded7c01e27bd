"""Fixtures of the personalization tests (the tiny text-to-image teacher and student, ``t2i``, are shared from
tests/conftest.py)."""

from __future__ import annotations

import pytest

from pqcad_deploy.train.cli import main as train_main


@pytest.fixture
def personalize(t2i):
    """``personalize(out, *extra, model=None)``: a 3-step ``pqcad-train personalize`` run; its exit code."""

    def run(out, *extra, model=None):
        argv = ["personalize", "--model", str(model or t2i["student"]), "--images", str(t2i["subject"]),
                "--out", str(out), "--steps", "3", "--batch-size", "2", "--prior-images", "2", "--text-encoder",
                str(t2i["bert"]), "--device", "cpu", *extra]  # fmt: skip
        return train_main(argv)

    return run
