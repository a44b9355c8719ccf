"""The card's folders ship as sub-packages of `phasescope`, in the wheel and in the editable install."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARD = ("probes", "spectra", "gradients", "dashboard", "store")


def checkout_packages() -> list[str]:
    """Dotted names of the checkout's packages: folders with an ``__init__.py`` under ``phasescope/`` and
    under the card folders (which install as ``phasescope.<folder>``)."""
    out = []
    for top, prefix in [("phasescope", "phasescope")] + [(f, f"phasescope.{f}") for f in CARD]:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in rel:
                out.append(".".join((prefix, *rel)))
    return out


def test_editable_import_maps_card_folders():
    import phasescope.spectra
    import phasescope.store

    assert Path(phasescope.spectra.__file__).resolve() == ROOT / "spectra" / "__init__.py"
    assert Path(phasescope.store.__file__).resolve() == ROOT / "store" / "__init__.py"


def test_wheel_file_list_and_import(tmp_path):
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("phasescope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"phasescope", f"phasescope-{wheel.name.split('-')[1]}.dist-info"}, tops
    for folder in CARD:
        assert f"phasescope/{folder}/__init__.py" in names, folder
    # every sub-package of the checkout ships (a package missing from pyproject's `packages` list would not)
    missing = [pkg for pkg in checkout_packages() if f"{pkg.replace('.', '/')}/__init__.py" not in names]
    assert not missing, f"not in the wheel (add them to [tool.setuptools] packages): {missing}"
    assert not any(n.startswith("phasescope/tests") or "/tests/" in n for n in names)
    assert "phasescope/cli.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "phasescope = phasescope.cli:main" in entry_points

    # Install the wheel alone into a folder and import from there, not from the checkout.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert installed == ["phasescope"], installed
    code = (
        "import phasescope.spectra, phasescope.store, phasescope.dashboard, phasescope.spectra.phases, "
        "phasescope.testing.synthetic; print(phasescope.spectra.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.stdout.strip().startswith(str(target / "phasescope" / "spectra")), res.stdout
