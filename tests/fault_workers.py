"""Workers that tests/test_faults.py starts as processes and SIGKILLs: each prints ``ready`` once its imports and
inputs are loaded, does one resumable job into a folder, and prints ``done <seconds>``.

Every worker uses one thread, so a killed-and-resumed run and an uninterrupted one compute the same floats.
Inputs are tiny and seeded; the same function builds them in the test process for the reference run.

    python tests/fault_workers.py synthesis <pipeline folder> <out folder>
    python tests/fault_workers.py features <clip folder> <image folder> <cache folder>
    python tests/fault_workers.py finetune <out folder>
"""

from __future__ import annotations

import sys
import time

import torch

ENCODE_PAUSE_S = 0.03  # per feature batch: the tiny CLIP is so fast that a kill would rarely land mid-run
STEP_PAUSE_S = 0.01  # per fine-tuning step, for the same reason


def synthesis_sources():
    """Return 8 seeded 32x32 sources (one batch each)."""
    from synood_kit.synthesis import SynthesisSource

    g = torch.Generator().manual_seed(0)
    return [
        SynthesisSource(f"src{i}", torch.rand(3, 32, 32, generator=g), "A photo only remain red background.", {"i": i})
        for i in range(8)
    ]


def synthesis_config():
    from synood_kit.inpainting import GuidanceConfig, InpaintConfig
    from synood_kit.synthesis import SynthesisConfig

    return SynthesisConfig(
        inpaint=InpaintConfig(num_inference_steps=4, guidance_scale=2.0),
        guidance=GuidanceConfig(rounds=1, target=0.0, step_size=0.5, normalize="unit"),
        scorer="mean-brightness",
        seed=3,
        batch_size=1,
    )


def extract_features(encoder, folder, cache):
    """The feature extraction every fault test interrupts: one image per batch, two per shard."""
    from synood_kit.data import ImageSet
    from synood_kit.features import image_features

    image_set = ImageSet.from_folder(folder, labelled=False)
    return image_features(encoder, image_set, cache_root=cache, batch_size=1, shard_size=2, progress=False)


def brightness(images):
    return images.mean(dim=(1, 2, 3))


def load_pipe(folder):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(folder), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class SlowEncoder:
    """The tiny CLIP with a pause per batch (the feature-cache interface: fingerprint, transform, encode_inputs)."""

    def __init__(self, clip, pause=ENCODE_PAUSE_S):
        self.clip, self.model, self.fingerprint, self.transform = clip, clip.model, clip.fingerprint, clip.transform
        self.pause = pause

    def encode_inputs(self, inputs):
        time.sleep(self.pause)
        return self.clip.encode_inputs(inputs)


def finetune_inputs():
    """Return ``(words, FinetuneData)`` for fine-tuning: 240 ID and 160 synthetic 16-d features, seeded."""
    from synood_kit.finetune import FinetuneData

    g = torch.Generator().manual_seed(0)
    d, c, k = 16, 3, 8
    id_text, neg_text = torch.randn(c, d, generator=g), torch.randn(k, d, generator=g)
    id_labels = torch.arange(240) % c
    id_feats = id_text[id_labels] + 0.8 * torch.randn(240, d, generator=g)
    syn_index = torch.arange(160) % k
    syn_feats = neg_text[syn_index] + 0.8 * torch.randn(160, d, generator=g)
    return [f"w{i}" for i in range(k)], FinetuneData(id_feats, id_labels, syn_feats, syn_index, id_text, neg_text)


def finetune_configs():
    from synood_kit.finetune import AdapterConfig, LabelTuneConfig

    return AdapterConfig(epochs=8, batch_size=64), LabelTuneConfig(
        epochs=8, batch_size=32
    )  # short epochs: many checkpoints


def warm_up_optimizers():
    """Take one Adam and one SGD step on a dummy parameter: a process's first optimiser step loads modules for
    ~0.7 s, which would otherwise make every early kill land before any work (the reference run is warm)."""
    import safetensors.torch  # noqa: F401 (imported by the first checkpoint otherwise)

    param = torch.nn.Parameter(torch.zeros(2))
    for opt in (torch.optim.Adam([param]), torch.optim.SGD([param], lr=0.1, momentum=0.9)):
        (param - 1).pow(2).sum().backward()
        opt.step()


def main(argv):
    torch.set_num_threads(1)
    job, *args = argv
    if job == "synthesis":
        from synood_kit.synthesis import synthesize

        pipe, sources = load_pipe(args[0]), synthesis_sources()
        print("ready", flush=True)
        start = time.perf_counter()
        for _ in synthesize(pipe, sources, brightness, args[1], synthesis_config(), progress=False):
            pass
    elif job == "features":
        from synood_kit.models import load_clip

        encoder = SlowEncoder(load_clip(args[0]))
        print("ready", flush=True)
        start = time.perf_counter()
        extract_features(encoder, args[1], args[2])
    elif job == "finetune":
        from synood_kit.finetune_run import finetune_run_steps

        words, data = finetune_inputs()
        adapter_config, label_config = finetune_configs()
        warm_up_optimizers()
        print("ready", flush=True)
        start = time.perf_counter()
        for _ in finetune_run_steps(args[0], words, data, adapter_config=adapter_config, label_config=label_config):
            time.sleep(STEP_PAUSE_S)
    else:
        raise SystemExit(f"unknown job {job!r}")
    print(f"done {time.perf_counter() - start:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
