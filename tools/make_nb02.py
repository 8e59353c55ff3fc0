from nbbuild import write_notebook

write_notebook(
    "notebooks/02_prompting_mllm.ipynb",
    [
        (
            "md",
            """
# 02 · Asking an MLLM for an image's context

**Question.** What does SynOOD's in-painting prompt contain? (Paper Sec. 3.2; METHOD.md stage 2.) An MLLM looks
at an ID image and lists everything except its main subject ("bamboo, tourists, railings" for a panda); the
answer, cut to 73 characters, fills the prompt `"A photo only remain {context}."`. This notebook asks the
question, shows raw and parsed answers and the prompts, and measures the answers against the mini-world's
ground truth. With a real MLLM, change only the parameters: `backend="transformers"` and
`mllm="llava-hf/llava-1.5-7b-hf"` (or a folder), or `backend="openai"` with an endpoint served by vLLM, SGLang
or Ollama.

**Run time** on 2 CPU cores (mini-world): under a minute.
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/02_prompting_mllm"  # where the JSONL, figures and metrics.json go
backend = "transformers"  # "transformers" (a model by name or folder) or "openai" (an OpenAI-compatible endpoint)
mllm = "miniworld"  # transformers: folder, hub id or "miniworld"; openai: the served model name
base_url = ""  # openai backend: e.g. http://localhost:8000/v1 (the key comes from $OPENAI_API_KEY)
question = "Describe everything in this image except the main subject."  # the official question is unpublished
n_images = 24  # ID images asked about
device = "cpu"  # torch device of a local model
""",
        ),
        (
            "code",
            """
import json
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display

from synood_kit.data import load_image
from synood_kit.miniworld.benchmark import open_benchmark, read_manifest
from synood_kit.plotting import image_grid
from synood_kit.prompting import OpenAIBackend, PromptingConfig, TransformersBackend, prompt_contexts

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
""",
        ),
        (
            "code",
            """
if backend == "openai":
    model = OpenAIBackend(base_url, mllm)
else:
    model = TransformersBackend(mllm, device=device)
config = PromptingConfig(question=question)
root = open_benchmark()
records = read_manifest(root, "id_test")
records = records[:: max(1, len(records) // n_images)][:n_images]
images = torch.stack([load_image(root / r["path"]) for r in records])
print(model.name)
""",
        ),
        (
            "md",
            """
## Ask, parse, prompt

`prompt_contexts` writes one JSONL row per image (id, question, raw answer, parsed context, prompt, and the
reason whenever the parser fell back) and skips images already answered, so a long run can be resumed.
""",
        ),
        (
            "code",
            """
(out / "contexts.jsonl").unlink(missing_ok=True)
rows = prompt_contexts(model, [(r["id"], img) for r, img in zip(records, images)], out / "contexts.jsonl", config)
lines = ["| image | raw answer | parsed context | prompt | ground truth |", "|---|---|---|---|---|"]
for r, row in list(zip(records, rows))[:10]:
    lines.append(f"| {r['class_name']} | {row['answer']} | {', '.join(row['context'])} | {row['prompt']} | {', '.join(r['context'])} |")
display(Markdown("\\n".join(lines)))
""",
        ),
        (
            "code",
            """
fig = image_grid(images[:12], [", ".join(row["context"])[:28] for row in rows[:12]], ncols=6, scale=1.6)
fig.savefig(out / "answers.png", dpi=110)
""",
        ),
        (
            "md",
            """
## How good are the answers?

On the mini-world the truth is known: the share of context elements named exactly, the false elements per
image, the share of answers that are exactly right, and the fallbacks.
""",
        ),
        (
            "code",
            """
named = total = false = exact = 0
for r, row in zip(records, rows):
    truth, said = set(r["context"]), set(row["context"])
    named += len(truth & said)
    total += len(truth)
    false += len(said - truth)
    exact += said == truth
metrics = {
    "backend": model.name,
    "question": question,
    "n": len(rows),
    "elements_named_exactly": named / total,
    "false_elements_per_image": false / len(rows),
    "exact_lists": exact / len(rows),
    "fallbacks": sum(row["fallback"] is not None for row in rows),
    "prompts_truncated_to": config.inpaint.max_context_chars,
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
""",
        ),
    ],
)
