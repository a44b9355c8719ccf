"""Make PyPI's torchvision importable next to a CPU build of torch (pytorch/vision#9085).

PyPI's torchvision wheels are CUDA builds: beside a ``+cpu`` torch their C++ extension cannot load
(``libc10_cuda.so`` is missing), which torchvision tolerates — except that ``_meta_registrations``
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, so
``import torchvision`` dies with "operator torchvision::nms does not exist" (torchvision 0.22 to at
least 0.29; the guard proposed upstream in pytorch/vision#9086 was closed unmerged). The models
(ResNet, ViT, …) need none of the extension's operators.

When the installed versions show that mismatch (torch ``…+cpu``, torchvision without ``+cpu``),
:func:`guard_torchvision_import` puts a finder on ``sys.meta_path`` that, the first time torchvision
is imported, tries torchvision's own extension and, only if it cannot load, declares the two
operator schemas (no kernels: ``torchvision.ops.nms`` still raises torchvision's own "Couldn't load
custom C++ ops"). Nothing is imported until torchvision is; with matching builds nothing is done.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

#: the operators torchvision registers fakes for without checking that its extension loaded
UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatched_builds() -> bool:
    """True where torch is a CPU build and torchvision is not (PyPI's CUDA wheel)."""
    torch_v, vision_v = _version("torch"), _version("torchvision")
    return bool(torch_v and vision_v and torch_v.endswith("+cpu") and not vision_v.endswith("+cpu"))


def declare_missing_ops() -> list[str]:
    """Load torchvision's extension if it can be loaded; else declare :data:`UNGUARDED_OPS`.
    Returns the operators declared (empty when the extension loaded or they exist)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return []
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
            return []
        except OSError:
            break
    declared = []
    for schema in UNGUARDED_OPS:
        name, args = schema.split("(", 1)
        try:
            torch.library.define(f"torchvision::{name}", "(" + args)
        except RuntimeError:  # already declared (by an earlier call or another library)
            continue
        declared.append(name)
    return declared


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs :func:`declare_missing_ops` just before torchvision is first imported, then does nothing.
    It stays on ``sys.meta_path``: removing itself while the import system iterates that list would
    make it skip the next finder. It never raises: at worst torchvision fails as it would without it."""

    done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and not self.done:
            self.done = True
            with contextlib.suppress(Exception):  # an import helper must not break the import
                declare_missing_ops()
        return  # the normal finders import torchvision itself


def guard_torchvision_import() -> bool:
    """Install the guard when the builds mismatch and torchvision is not imported yet; returns whether it did."""
    if "torchvision" in sys.modules or not mismatched_builds():
        return False
    if not any(type(f).__name__ == _TorchvisionGuard.__name__ for f in sys.meta_path):  # also the .pth's copy
        sys.meta_path.insert(0, _TorchvisionGuard())
    return True


PTH_NAME = "phasescope-torchvision-guard.pth"


def write_startup_guard(site_packages: str | None = None) -> str:
    """Where the builds mismatch, write a ``.pth`` file into ``site_packages`` (default: this
    interpreter's) that installs the guard at every interpreter start-up, so torchvision imports in any
    script whatever it imports first (``transformers`` imports torchvision when it is installed).
    Elsewhere remove that file if an earlier run wrote it. Returns what was done. ``make install`` runs it."""
    import sysconfig

    path = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    if mismatched_builds():
        # This file alone, run by path: importing the phasescope package at every start-up would shadow
        # any other copy of it on sys.path (a wheel under test, a checkout).
        here = str(Path(__file__).resolve())
        path.write_text(
            f"import os, runpy; os.path.exists({here!r}) and runpy.run_path({here!r})['guard_torchvision_import']()\n"
        )
        return f"wrote {path}: torch is a CPU build and torchvision is not (pytorch/vision#9085)"
    if path.exists():
        path.unlink()
        return f"removed {path}: torch and torchvision builds match"
    return "torch and torchvision builds match (or torchvision is not installed): nothing to do"
