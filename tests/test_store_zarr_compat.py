"""store/zarr_compat.py: the one home of zarr internals, and the zarr range it supports.

The range is declared once in the module; pyproject's requirement must agree with it, the installed
zarr must be inside it, and a zarr outside it is refused with one line: installed version, supported
range, and the pip command that fixes it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from phasescope.store import RunWriter, open_run, zarr_compat
from phasescope.store.zarr_compat import ZARR_REQUIREMENT, ZARR_SPECIFIER, ZarrVersionError

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("probes", "spectra", "gradients", "store", "dashboard", "phasescope")


def test_installed_zarr_is_supported():
    assert zarr_compat.version_problem(zarr.__version__) is None, zarr_compat.version_problem(zarr.__version__)
    zarr_compat.check_installed()


@pytest.mark.parametrize("version", ["3.1.6", "3.1.7", "3.1.99", "3.1.7.dev3+g0123abc"])
def test_versions_inside_the_range_pass(version):
    assert zarr_compat.version_problem(version) is None
    zarr_compat.check_version(version)


@pytest.mark.parametrize("version", ["3.2.0", "3.2", "3.2.0rc1", "4.0.0", "3.1.5", "3.1", "3.0.8", "2.18.3", "garbage"])
def test_versions_outside_the_range_fail_with_one_clear_line(version):
    with pytest.raises(ZarrVersionError) as e:
        zarr_compat.check_version(version)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"zarr {version} is installed" in msg
    assert ZARR_SPECIFIER in msg
    assert f'pip install "{ZARR_REQUIREMENT}"' in msg
    assert msg == zarr_compat.version_problem(version)


def test_pyproject_declares_the_same_zarr_range():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (zreq,) = [Requirement(d) for d in deps if Requirement(d).name == "zarr"]
    assert zreq.specifier == SpecifierSet(ZARR_SPECIFIER), (str(zreq.specifier), ZARR_SPECIFIER)
    assert f"zarr{ZARR_SPECIFIER}" == ZARR_REQUIREMENT
    # The module's first docstring line names the supported range too.
    first_line = zarr_compat.__doc__.strip().splitlines()[0]
    assert "only module" in first_line and ZARR_SPECIFIER in first_line, first_line


def test_unsupported_installed_zarr_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(zarr, "__version__", "3.2.0")
    monkeypatch.setattr(zarr_compat, "_CHECKED", False)
    path = tmp_path / "r.zarr"
    with pytest.raises(ZarrVersionError, match=r"zarr 3\.2\.0 is installed"):
        RunWriter(path, probes=["p"], params=[], metrics=["rankme"], max_rank=2)
    assert not path.exists()


def test_remote_paths_go_through_the_compat_helpers():
    """memory:// exercises get_bytes, set_many, list_dir, sync_array and async_array."""
    url = "memory://compat-" + str(np.random.default_rng().integers(1 << 40))
    with RunWriter(url, probes=["p"], params=["w"], metrics=["rankme"], max_rank=2) as w:
        for s in range(3):
            w.append_step(s, {"loss": float(s)}, params={"grad_norm": [s]})
        w.append_capture(2, {"rankme": [1.5]}, np.array([[2.0, 1.0]]), [4])
    for lazy in (True, False):
        ds = open_run(url, lazy=lazy)
        np.testing.assert_array_equal(ds.loss.values, [0.0, 1.0, 2.0])
        np.testing.assert_array_equal(ds.eigenvalues.values, [[[2.0, 1.0]]])


def _internal_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("zarr.core"):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.startswith("zarr.core")]
        elif isinstance(node, ast.Attribute):
            if node.attr in ("_async_array", "encode_chunk_key", "to_buffer_dict"):
                found.append(f".{node.attr}")
            elif node.attr == "core" and isinstance(node.value, ast.Name) and node.value.id == "zarr":
                found.append("zarr.core")
    return found


def test_zarr_internals_are_used_only_in_the_compat_module():
    offenders = {}
    for folder in LIBRARY:
        for p in sorted((ROOT / folder).rglob("*.py")):
            if p == ROOT / "store" / "zarr_compat.py":
                continue
            uses = _internal_uses(ast.parse(p.read_text(), filename=str(p)))
            if uses:
                offenders[str(p.relative_to(ROOT))] = uses
    assert not offenders, f"zarr internals outside store/zarr_compat.py: {offenders}"
    compat = ast.parse((ROOT / "store" / "zarr_compat.py").read_text())
    assert _internal_uses(compat), "the detector no longer sees the compat module's own uses"


def test_group_json_merges_and_drops_attributes():
    store = zarr.storage.MemoryStore()
    group = zarr.open_group(store, mode="w", zarr_format=3, attributes={"a": 1, "error": "old"})
    blob = zarr_compat.group_json(group, {"b": 2})
    assert json.loads(blob)["attributes"] == {"a": 1, "error": "old", "b": 2}
    zarr_compat.drop_group_attrs(group, ["error", "absent"])
    assert json.loads(zarr_compat.group_json(group, {}))["attributes"] == {"a": 1, "b": 2}


def test_group_json_equals_zarrs_own_encoding_byte_for_byte():
    """group_json skips zarr's deep copy of the attributes but must write exactly zarr's bytes."""
    store = zarr.storage.MemoryStore()
    group = zarr.open_group(store, mode="w", zarr_format=3, attributes={"a": 1})
    attrs = {"nested": {"x": [1, 2.5, None], "ü": "ß"}, "nan": float("nan"), "inf": float("-inf"), "t": True}
    for new in ({}, attrs, {"commit": {"n_steps": 3, "updated": 1.5}}, {"commit": {"n_steps": 4}}):
        assert zarr_compat.group_json(group, new) == zarr_compat.group_json_reference(group)
    zarr_compat.drop_group_attrs(group, ["nan"])
    assert zarr_compat.group_json(group, {}) == zarr_compat.group_json_reference(group)
    with zarr.config.set({"json_indent": 0}):  # the indent is zarr's setting when the template is taken
        other = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3, attributes=attrs)
        assert zarr_compat.group_json(other, {"b": 2}) == zarr_compat.group_json_reference(other)
