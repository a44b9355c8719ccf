"""Every third-party package the library imports is declared in pyproject (dependencies or an extra).

A package that is only installed because something else pulls it in (numcodecs and google-crc32c
through zarr, pandas through xarray, flask through dash) breaks the day that dependency drops it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("probes", "spectra", "gradients", "store", "dashboard", "phasescope")

# Import name -> distribution name, where they differ beyond case and "_" vs "-".
DISTRIBUTION = {
    "google_crc32c": "google-crc32c",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "huggingface_hub": "huggingface-hub",
    "mlflow": "mlflow-skinny",  # the client-only distribution of the mlflow module (probes/trackers.py)
}
# The library may import from any extra (optional imports are guarded in the code), but not from the
# development ones: "test", "lint" (the checks of `make check`) and "docs" (the documentation site).
TEST_ONLY_EXTRAS = {"test", "lint", "docs"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    where = {}
    groups = {"dependencies": project["dependencies"]}
    groups.update(
        {f"extra {k}": v for k, v in project.get("optional-dependencies", {}).items() if k not in TEST_ONLY_EXTRAS}
    )
    for group, reqs in groups.items():
        for r in reqs:
            where.setdefault(_normalize(Requirement(r).name), group)
    return where


def _imports() -> dict[str, set[str]]:
    """Top-level names of absolute imports in the library, with the files that import them."""
    found: dict[str, set[str]] = {}
    for folder in LIBRARY:
        for p in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], set()).add(str(p.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    declared = _declared()
    imports = _imports()
    assert {"numpy", "zarr", "numcodecs", "google_crc32c"} <= set(imports), "the import walk finds nothing"
    missing = {}
    for name, files in sorted(imports.items()):
        if name in sys.stdlib_module_names or name in ("__future__", "phasescope"):
            continue
        dist = _normalize(DISTRIBUTION.get(name, name))
        if dist not in declared:
            missing[name] = f"distribution {dist!r}, imported in {sorted(files)}"
    assert not missing, f"imported but not declared in pyproject: {missing}"


def test_named_transitive_imports_are_direct_dependencies():
    declared = _declared()
    for dist in ("numcodecs", "google-crc32c", "pandas", "flask", "zarr", "fsspec"):
        assert declared.get(dist) == "dependencies", (dist, declared.get(dist))
