"""Time loading the three shipped mini-world models through the kit's public loaders, in this process.

The mini-world issue's target: CLIP, classifier and MLLM load together in under 10 s on a fresh clone. Library
imports (torch, open_clip, transformers) are timed apart, since a notebook pays them once whatever it loads.

    python benchmarks/model_loading.py
"""

from __future__ import annotations

import time

TARGET_SECONDS = 10.0


def main() -> None:
    t = time.perf_counter()
    import open_clip  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    imports = time.perf_counter() - t

    from synood_kit.classifier import load_classifier
    from synood_kit.mllm import load_mllm
    from synood_kit.models import load_clip

    seconds = {}
    for name, load in (("CLIP", load_clip), ("classifier", load_classifier), ("MLLM", load_mllm)):
        t = time.perf_counter()
        load("miniworld")
        seconds[name] = time.perf_counter() - t
    total = sum(seconds.values())
    print(f"imports (torch, open_clip, transformers): {imports:.2f} s")
    for name, sec in seconds.items():
        print(f"{name:10s} {sec:6.2f} s")
    print(f"all three  {total:6.2f} s   ratio to the {TARGET_SECONDS:.0f} s target {total / TARGET_SECONDS:.2f}")
    print(f"with imports {imports + total:.2f} s   ratio {(imports + total) / TARGET_SECONDS:.2f}")


if __name__ == "__main__":
    main()
