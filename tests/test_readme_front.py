"""The README's front door is true: the snippets of "## Three ways to use it" and "## Metrics" run as
written, in order, in a fresh folder (the first writes the run the second opens). The "## Integrations"
snippets have their own test (test_integrations_readme.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phasescope.store import open_run

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets(section: str) -> list[str]:
    body = README.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.slow
def test_three_ways_and_metrics_snippets_run_as_written(tmp_path):
    code = snippets("Three ways to use it") + snippets("Metrics")
    assert len(code) == 3
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = []
    for i, text in enumerate(code):
        script = tmp_path / f"snippet{i}.py"
        script.write_text(text)
        res = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, (i, res.stderr[-3000:])
        outs.append(res.stdout)
    ds = open_run(tmp_path / "runs" / "my-run.zarr")
    assert ds.attrs["status"] == "finished" and ds.sizes["step"] == 200
    assert list(ds["probe"].values) == ["block.0", "block.1", "final_norm"]
    first = f"{float(ds['rankme'].sel(probe='final_norm').values[0]):.6g}"[:5]
    assert "capture_step" in outs[1] and first in outs[1]  # the xarray snippet printed the series
