"""``import synood_kit`` stays cheap: no torch, well under a second."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _run(code: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return elapsed, done.stdout.strip()


def test_import_synood_kit_is_fast():
    # The best of three runs, so that one slow start on a busy machine does not fail the test.
    best = min(_run("import synood_kit")[0] for _ in range(3))
    assert best < 1.0, f"`import synood_kit` took {best:.2f} s (best of 3)"


@pytest.mark.parametrize("module", ["synood_kit", "synood_kit.metrics", "synood_kit.storage", "synood_kit.config"])
def test_import_does_not_load_torch(module):
    heavy = ("torch", "open_clip", "diffusers", "transformers", "umap", "sklearn")
    _, out = _run(f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert out == "[]", f"importing {module} loaded {out}"
