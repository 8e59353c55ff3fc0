# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (synood-kit)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Asking an MLLM for an image's context
#
# **Question.** What does SynOOD's in-painting prompt contain? (Paper Sec. 3.2; docs/method.md, stage 2.) An
# MLLM looks at an ID image and lists everything except its main subject ("bamboo, tourists, railings" for a
# panda); the answer fills the prompt `"A photo only remain {context}."`. This notebook asks the question through
# the same path batch synthesis uses (a prompting backend, then the reply parser, which records every fallback),
# shows raw and parsed answers and the prompts, and, where the benchmark knows the true context (the
# mini-world), measures the answers against it.
#
# The MLLM is the preset's: the mini-world's own tiny LLaVA, or with `preset="paper"` LLaVA-1.5 (a folder or hub
# id, or a model served by vLLM, SGLang or Ollama at `models.mllm_endpoint`).
#
# **Run time**, mini-world, 2 CPU cores: under a minute.

# %% tags=["parameters"]
out_dir = "outputs/notebooks/02_prompting_mllm"  # where the JSONL, figures and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {synthesis.prompting.question: ...}
n_images = 24  # ID training images asked about (a fixed-seed sample)
seed = 0  # sampling seed

# %%
import dataclasses
from pathlib import Path

import pandas as pd
from IPython.display import display

from synood_kit.plotting import image_grid
from synood_kit.prompting import context_agreement, prompt_contexts
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis_run import context_backend, read_sources

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(benchmark, data_roots, preset, overrides)
settings = dataclasses.replace(config.synthesis, context="mllm")  # the MLLM, even where synthesis uses the truth
backend = context_backend(settings, config.models, bench)
items = list(bench.id_train.sample(n_images, seed).items)
shown, images = next(read_sources(items, settings.sources.size, len(items)))
print(backend.name, "|", settings.prompting.question)

# %% [markdown]
# ## Ask, parse, prompt
#
# `prompt_contexts` writes one JSONL row per image (id, question, raw answer, parsed context, prompt, and the
# reason whenever the parser fell back to the fallback context) and skips images already answered, so a long run
# resumes. The prompt keeps whole context elements within 73 characters (the official code cut the raw answer at
# 73 characters, mid-word; `synthesis.prompting.truncate = "official"` does that).

# %%
(out / "contexts.jsonl").unlink(missing_ok=True)
rows = prompt_contexts(
    backend,
    [(it.id, img) for it, img in zip(shown, images)],
    out / "contexts.jsonl",
    settings.prompting,
    inpaint=settings.inpaint,
)
table = pd.DataFrame(rows)[["id", "answer", "context", "fallback", "prompt"]]
table.insert(1, "class", [bench.class_names[it.label] for it in shown])
display(table.head(10))

# %%
fig = image_grid(images[:12], [", ".join(row["context"])[:28] for row in rows[:12]], ncols=6, scale=1.6)
fig.savefig(out / "answers.png", dpi=110)

# %% [markdown]
# ## How good are the answers?
#
# Where the truth is known: the share of true context elements named, the false elements per image, the share of
# answers that name exactly the truth, and the fallbacks. Elsewhere only the fallbacks are counted.

# %%
truth = bench.annotations.context
agreement = context_agreement(rows, truth) if truth else {"fallbacks": sum(r["fallback"] is not None for r in rows)}
agreement

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: the backend and question, the number of rows, the agreement with the truth (where known), and
# the character limit of the prompts.

# %%
atomic_write_json(
    out / "metrics.json",
    {
        "backend": backend.name,
        "question": settings.prompting.question,
        "n": len(rows),
        **agreement,
        "prompts_truncated_to": settings.inpaint.max_context_chars,
    },
)
