"""Every Python block of the README runs as written.

A block runs in a fresh namespace in an empty temporary folder. The line just
before a block may hold one directive, an HTML comment the rendered README
hides:

- ``<!-- readme-test: cifar10 -->``: first write a small CIFAR-10 folder in
  the binary format (``cifar-10-batches-bin/``, 20 images per batch), the
  stand-in for a user's download;
- ``<!-- readme-test: skip: <reason> -->``: the block needs what a test
  cannot start (an MPI launcher, a Dask scheduler); the reason is required.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<directive>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def readme_blocks():
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    blocks = []
    for k, m in enumerate(_BLOCK.finditer(text)):
        line = text.count("\n", 0, m.start("code")) + 1
        blocks.append(pytest.param(m.group("directive") or "", m.group("code"), line, id=f"line{line}"))
    return blocks


def write_cifar10(folder, per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.empty((per_batch, 3073), np.uint8)
        records[:, 0] = rng.integers(0, 10, per_batch)
        records[:, 1:] = rng.integers(0, 256, (per_batch, 3072))
        records.tofile(os.path.join(folder, name))


def test_the_readme_has_python_blocks():
    assert len(readme_blocks()) >= 3


@pytest.mark.parametrize("directive, code, line", readme_blocks())
def test_readme_block_runs(directive, code, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if directive.startswith("skip:"):
        reason = directive[len("skip:"):].strip()
        assert reason, f"README line {line}: a skipped block must say why"
        pytest.skip(f"README line {line}: {reason}")
    if directive == "cifar10":
        write_cifar10(str(tmp_path / "cifar-10-batches-bin"))
    else:
        assert directive == "", f"README line {line}: unknown directive {directive!r}"
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
