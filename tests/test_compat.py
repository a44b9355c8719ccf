"""phasescope.compat: PyPI's torchvision (a CUDA build) importable beside a CPU torch (pytorch/vision#9085)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phasescope import compat


def test_the_guard_runs_once_never_raises_and_leaves_meta_path_alone(monkeypatch):
    calls = []

    def boom():
        calls.append(1)
        raise ValueError("anything")

    monkeypatch.setattr(compat, "declare_missing_ops", boom)
    guard = compat._TorchvisionGuard()
    monkeypatch.setattr(sys, "meta_path", [guard, *sys.meta_path])
    before = list(sys.meta_path)
    assert guard.find_spec("torchvision") is None and guard.find_spec("torchvision") is None
    assert calls == [1] and sys.meta_path == before  # not removed while the import system iterates it
    assert guard.find_spec("numpy") is None and calls == [1]


def test_the_startup_file_is_written_only_for_mismatched_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(compat, "mismatched_builds", lambda: True)
    assert compat.write_startup_guard(str(tmp_path)).startswith("wrote")
    line = (tmp_path / compat.PTH_NAME).read_text()
    assert line.startswith("import os, runpy;") and "import phasescope" not in line  # never shadows a checkout
    monkeypatch.setattr(compat, "mismatched_builds", lambda: False)
    assert compat.write_startup_guard(str(tmp_path)).startswith("removed")
    assert not (tmp_path / compat.PTH_NAME).exists()


def test_torchvision_imports_after_transformers_in_a_fresh_interpreter():
    """The order that broke every Hugging Face script once torchvision was installed: transformers first
    (it imports torchvision when present), phasescope never imported."""
    pytest.importorskip("torchvision")
    code = (
        "import sys; from transformers import GPT2LMHeadModel; import torchvision, torch; "
        "m = torchvision.models.resnet18(weights=None); print(m(torch.zeros(2, 3, 32, 32)).shape, "
        "'phasescope' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] == "False" and "torch.Size([2, 1000])" in res.stdout
