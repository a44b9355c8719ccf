"""MkDocs hook: lets mkdocstrings (griffe) read the package as it is installed.

The repository's folders install as sub-packages of one import package (pyproject's package-dir:
``phasescope.spectra`` is the folder ``spectra/``). Griffe reads source files by path and follows only the
top-level entry of an editable install, so this hook builds, in a temporary folder, a ``phasescope/``
tree of symbolic links laid out as the installed package is, and puts that folder first on the python
handler's search paths. Nothing is imported and nothing is written inside the repository.

Also: the ObservatoryOptions table of the API page, and ``SphinxRoles``, a griffe extension.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

import griffe
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("probes", "spectra", "gradients", "store", "dashboard")  # pyproject's package-dir


_TREES: list[Path] = []


def _remove_trees() -> None:
    while _TREES:
        shutil.rmtree(_TREES.pop(), ignore_errors=True)


atexit.register(_remove_trees)


def package_tree() -> Path:
    top = Path(tempfile.mkdtemp(prefix="phasescope-docs-"))
    _TREES.append(top)
    pkg = top / "phasescope"
    pkg.mkdir()
    for entry in (ROOT / "phasescope").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(ROOT / name)
    return top


def on_shutdown():
    _remove_trees()


@event_priority(100)  # before mkdocstrings' on_config, which may start the handler
def on_config(config):
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(package_tree())]
    return config


OPTIONS_MARK = "<!-- observatory-options -->"
_OPTION = re.compile(r"^    (?P<name>\w+): [^=]+= (?P<default>.*?)\s*(?:# (?P<comment>.+))?$")


def options_table() -> str:
    """ObservatoryOptions as a table, read from the commented dataclass in probes/options.py (its class
    docstring is built at import time, which griffe does not see)."""
    lines = (ROOT / "probes" / "options.py").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class ObservatoryOptions"))
    rows, i = ["| option | default | meaning |", "| --- | --- | --- |"], start + 1
    while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        line = lines[i]
        if line.strip().startswith("# --"):
            rows.append(f"| **{line.strip().strip('# -')}** | | |")
        elif (m := _OPTION.match(line)) is not None:
            default, comment = m["default"], m["comment"]
            if default == "(" and i + 2 < len(lines):  # a formatter wrapped a long field in parentheses
                default, _, comment = lines[i + 1].strip().partition("  # ")
                i += 2
            cell = comment.replace("|", "\\|") if comment else ""
            rows.append(f"| `{m['name']}` | `{default}` | {cell} |")
        elif line.startswith(("    def ", "    @")):
            break
        i += 1
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if OPTIONS_MARK in markdown:
        markdown = markdown.replace(OPTIONS_MARK, options_table())
    return markdown


_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|obj|exc):`(?P<tilde>~?)(?P<target>[^`<]+?)(?: <[^`]+>)?`")


def _plain_role(m: re.Match) -> str:
    target = m["target"].strip()
    return f"`{target.rsplit('.', 1)[-1] if m['tilde'] else target}`"


class SphinxRoles(griffe.Extension):
    """Docstrings cite objects with Sphinx roles (``:class:`~phasescope.spectra.Spectrum```), which
    ``help()`` shows as they are; on this site they read as code, ``~`` keeping the last name only."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_plain_role, obj.docstring.value)
