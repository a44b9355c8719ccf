"""Arithmetic word problems answered two ways, built in code (no download): tersely ("The answer is 12.")
or with worked steps ("Tom has 7 apples and buys 5 more. 7 + 5 = 12. … The answer is 12."). The
response-type comparison of Li et al. 2024 ("What Happened in LLMs Layers when Trained for Fast vs. Slow
Thinking") at tiny scale: `phasescope analyze --gradients` on the two JSONL sets gives two comparable runs
whose gradient layer profiles the dashboard overlays (`bench/response_types.py` reports the numbers).

Each problem has one or two operations (+, −, ×) on small integers, phrased with a name, an object and a
verb; ``answer`` is the exact result, checked by the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAMES = ("Tom", "Ann", "Sam", "Eli", "Mia", "Ben", "Ada", "Leo", "Ivy", "Max")
THINGS = ("apples", "books", "coins", "shells", "stamps", "pens", "cards", "beads")
STYLES = ("terse", "worked")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    steps: tuple[str, ...]  # the worked solution, one sentence per operation

    def response(self, style: str) -> str:
        """The answer in ``style``: "terse" (the result alone) or "worked" (each step, then the result)."""
        if style == "terse":
            return f" The answer is {self.answer}."
        if style == "worked":
            return " " + " ".join(self.steps) + f" The answer is {self.answer}."
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def word_problems(n: int, seed: int = 0) -> list[Problem]:
    """``n`` problems, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        who, what = NAMES[rng.integers(len(NAMES))], THINGS[rng.integers(len(THINGS))]
        a, b = (int(v) for v in rng.integers(2, 20, 2))
        op = rng.integers(3)
        if op == 0:
            q = f"{who} has {a} {what} and gets {b} more."
            total, step = a + b, f"{a} + {b} = {a + b}."
        elif op == 1:
            a, b = max(a, b), min(a, b)
            q = f"{who} has {a} {what} and gives away {b}."
            total, step = a - b, f"{a} - {b} = {a - b}."
        else:
            b = int(rng.integers(2, 6))
            q = f"{who} has {b} boxes with {a} {what} in each."
            total, step = a * b, f"{b} x {a} = {a * b}."
        steps = [step]
        if rng.random() < 0.5:  # a second operation
            c = int(rng.integers(2, 10))
            q += f" Then {who} finds {c} more."
            steps.append(f"{total} + {c} = {total + c}.")
            total += c
        out.append(Problem(f"{q} How many {what} does {who} have now?", total, tuple(steps)))
    return out


def write_jsonl(problems: list[Problem], path: Path | str, style: str) -> Path:
    """The problems as ``{"prompt", "response"}`` lines (what ``phasescope analyze --text`` reads as
    pairs: the loss and the gradients count the response's tokens only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            f.write(
                json.dumps({"prompt": "Question: " + p.question + "\nAnswer:", "response": p.response(style)}) + "\n"
            )
    return path
