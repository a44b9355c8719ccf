"""The README's "## Integrations" snippets run as written (each as a script in a fresh folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phasescope.store import open_run

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Integrations", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize(("index", "store"), [(0, "hf"), (1, "pl"), (2, "flax"), (3, "ddp"), (4, "vision")])
def test_readme_integration_snippet_runs(tmp_path, index, store):
    code = _snippets()[index]
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PHASESCOPE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, str(script)]
    if store == "ddp":  # as documented: torchrun with two gloo processes
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(script),
        ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ds = open_run(tmp_path / "runs" / f"{store}.zarr")
    assert ds.sizes["step"] >= 4 and ds.sizes["capture_step"] >= 1 and ds.attrs["finished"] is True
    if store == "vision":  # the ResNet preset, channels as features
        assert [v["features"] for v in ds.attrs["probe_reductions"].values()] == [64, 64, 128, 256, 512, 512]


def test_readme_has_five_integration_snippets():
    assert len(_snippets()) == 5


def test_readme_vision_snippet_is_at_most_15_lines():
    assert len(_snippets()[4].strip().splitlines()) <= 15
