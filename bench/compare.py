"""Any benchmark of bench/, the current tree side by side with a baseline git revision, in one run.

The baseline revision is exported (``git archive``) and installed into a folder of its own
(``pip install --no-deps --target``), which is put first on PYTHONPATH so it shadows the editable
install; each side runs its *own* copy of the benchmark script. Runs alternate baseline, current,
baseline, current, … (``--repeat`` pairs) so machine noise hits both alike. Every output line whose
text matches between the two sides apart from its numbers is printed once with the numbers of both,
the median over repeats, and the ratio current / baseline of its first number that differs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compare.py overhead.py --baseline b407d9b --repeat 2 -- --rounds 40
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?")


def install_baseline(rev: str, where: Path) -> Path:
    """The package of revision ``rev`` installed into ``where/site``; returns that folder."""
    src, site = where / "src", where / "site"
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(src, filter="data")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
    )
    return site


def run(script: Path, args: list[str], pythonpath: str | None) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, cwd=script.parent.parent
    )
    if out.returncode:
        raise SystemExit(f"{script} failed ({'baseline' if pythonpath else 'current'}):\n{out.stderr[-3000:]}")
    return out.stdout


def skeleton(line: str) -> str:
    return NUMBER.sub("#", line).strip()


def fill(line: str, values: list[float]) -> str:
    """``line`` with its numbers replaced by ``values`` (the medians over repeats)."""
    it = iter(values)
    return NUMBER.sub(lambda m: f"{next(it, float('nan')):.4g}", line.strip())


def numbers(line: str) -> list[float]:
    return [float(t.replace(",", "")) for t in NUMBER.findall(line)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("script", help="a script of bench/, e.g. overhead.py")
    ap.add_argument("--baseline", default="b407d9b", help="git revision to compare with")
    ap.add_argument("--repeat", type=int, default=1, help="alternating (baseline, current) pairs")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    args = argv[cut + 1 :]  # after "--": the benchmark's own arguments
    with tempfile.TemporaryDirectory(prefix="phasescope-baseline-") as tmp:
        site = install_baseline(a.baseline, Path(tmp))
        check = subprocess.run(
            [sys.executable, "-c", "import phasescope; print(phasescope.__file__)"],
            env=dict(os.environ, PYTHONPATH=str(site)),
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        assert str(site) in check.stdout, f"the baseline does not shadow the editable install: {check.stdout}"
        outs: dict[str, list[list[str]]] = {"baseline": [], "current": []}
        # The baseline's own scripts, in a folder whose parent holds no phasescope/ (some scripts put
        # their parent folder first on sys.path, which would mix the baseline's facade with this tree).
        shutil.copytree(Path(tmp) / "src" / "bench", Path(tmp) / "scripts" / "bench")
        for _ in range(a.repeat):
            outs["baseline"].append(run(Path(tmp) / "scripts" / "bench" / a.script, args, str(site)).splitlines())
            outs["current"].append(run(REPO / "bench" / a.script, args, None).splitlines())
    print(f"{a.script}: baseline {a.baseline} vs current tree, {a.repeat} alternating pair(s), median of repeats")
    base_lines = {skeleton(ln): ln for ln in outs["baseline"][0]}
    for _i, line in enumerate(outs["current"][0]):
        key = skeleton(line)
        if key not in base_lines or not numbers(line):
            continue
        cur = [numbers(ln) for run_ in outs["current"] for ln in run_ if skeleton(ln) == key]
        old = [numbers(ln) for run_ in outs["baseline"] for ln in run_ if skeleton(ln) == key]
        c = [statistics.median(col) for col in zip(*cur)]
        b = [statistics.median(col) for col in zip(*old)]
        # The ratio of the first number that differs (labels such as sizes are equal on both sides).
        diff = next((j for j, (x, y) in enumerate(zip(c, b)) if x != y), None)
        ratio = f"{c[diff] / b[diff]:6.3f}" if diff is not None and b[diff] else " same "
        print(f"  x{ratio}  current : {fill(line, c)[:110]}")
        print(f"           baseline: {fill(line, b)[:110]}")
    missing = [ln.strip() for ln in outs["current"][0] if skeleton(ln) not in base_lines and numbers(ln)]
    if missing:
        print("  only in current:")
        for ln in missing:
            print(f"    {ln[:110]}")


if __name__ == "__main__":
    main()
