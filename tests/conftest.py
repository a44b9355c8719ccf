"""Shared test set-up: one torch intra-op thread (2-core CI machines), offline Hugging Face."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


#: tests that take minutes: run first, so that under pytest-xdist (``make test`` runs 2 workers) one
#: worker starts on them at once while the other works through the rest, instead of one of them
#: starting last and the whole suite waiting for it
# minutes-long modules first (test_phases_three.py only under make test-long, when it trains live)
LONG_FIRST = ("test_phases_three.py", "test_vision_ssl.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order within each group is kept


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Three checkpoints (steps 0, 4, 8) of a 1-layer, d=16 GPT-2 in ``ck/`` and 24 probe lines in
    ``p.txt``: the smallest real sweep for ``phasescope analyze`` (built once per test module)."""
    from phasescope.testing.toy_checkpoints import train_checkpoints, write_probe_file

    root = tmp_path_factory.mktemp("sweep")
    train_checkpoints(root / "ck", [0, 4, 8], n_layer=1, n_embd=16, n_head=2, seq_len=16)
    write_probe_file(root / "p.txt", n=24)
    return root
