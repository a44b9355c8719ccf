"""The documentation site: `mkdocs build --strict` succeeds offline (broken links and anchors, griffe's
docstring warnings fail it) with every page of the nav and the generated API reference, and every
```python block of docs/*.md runs as written — each page's blocks in order, as scripts in a fresh
folder, as tests/test_readme_front.py does for the README. A block preceded by
`<!-- not-run: reason -->` is an illustrative fragment and is not run; there are few of them."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(?:<!-- not-run: (?P<reason>[^\n]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)
MAX_NOT_RUN = 8


def nav_pages(nav) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def built_path(site: Path, page: str) -> Path:
    stem = page[: -len(".md")]
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def blocks(page: Path) -> list[tuple[str | None, str]]:
    return [(m["reason"], m["code"]) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


CONFIG = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.SafeLoader)  # plain YAML: no !!python tags
PAGES = nav_pages(CONFIG["nav"])
RUNNABLE = [p for p in PAGES if any(reason is None for reason, _ in blocks(DOCS / p))]


def test_site_builds_strict_with_every_page_and_the_api_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "WARNING" not in res.stderr, res.stderr[-4000:]
    missing = [p for p in PAGES if not built_path(site, p).is_file()]
    assert not missing, missing
    assert not (site / "hooks.py").exists() and not (site / "picture.py").exists()  # scripts stay out of the site
    api = built_path(site, "api/probes.md").read_text(encoding="utf-8")
    assert "phasescope.probes.observatory.Observatory" in api
    from phasescope.probes import Observatory, ObservatoryOptions

    params = [n for n in inspect.signature(Observatory.__init__).parameters if n not in ("self", "option_overrides")]
    assert all(f"<code>{n}</code>" in api for n in params), [n for n in params if f"<code>{n}</code>" not in api]
    from dataclasses import fields

    assert all(f"<code>{f.name}</code>" in api for f in fields(ObservatoryOptions))  # the options table
    for page, names in {
        "api/spectra.md": ["rankme", "alpha_req", "CovarianceAccumulator"],
        "api/store.md": ["open_run", "list_runs", "SCHEMA_VERSION"],
        "api/statistics.md": ["register", "Statistic", "Variable"],
        "api/phases.md": ["detect_phases", "PhaseResult"],
    }.items():
        text = built_path(site, page).read_text(encoding="utf-8")
        assert all(n in text for n in names), (page, [n for n in names if n not in text])


def test_examples_are_marked_sparingly():
    """Every ```python block runs unless marked, and the marks say why and stay few."""
    marked = [(p, reason) for p in PAGES for reason, _ in blocks(DOCS / p) if reason is not None]
    assert all(reason.strip() for _, reason in marked)
    assert len(marked) <= MAX_NOT_RUN, marked
    assert len(RUNNABLE) >= 9, RUNNABLE  # usage, the six integrations, metrics, contributing


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE)
def test_page_examples_run_as_written(tmp_path, page):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    code = [c for reason, c in blocks(DOCS / page) if reason is None]
    for i, text in enumerate(code):
        script = tmp_path / f"example{i}.py"
        script.write_text(text, encoding="utf-8")
        res = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, (page, i, res.stderr[-3000:])
