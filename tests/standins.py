"""Stand-ins for the paper's models and data, with their real architectures and input geometry and random weights,
built offline by test code (nothing of this goes to ``assets/``):

* an SD-2-style in-painting pipeline at 512 px: a 9-channel ``UNet2DConditionModel`` with linear projections over
  64x64 latents, a 4-block ``AutoencoderKL`` with scaling factor 0.18215, a ``CLIPTextModel``, OpenAI CLIP's BPE
  tokenizer (derived from open_clip's vocabulary file) and SD-2's PNDM scheduler, saved with ``save_pretrained``;
* a LLaVA-1.5-style ``LlavaForConditionalGeneration`` at 336 px (patch 14, 576 image tokens) with the llava-1.5
  chat template ("USER: <image>\\n... ASSISTANT:"), saved with its processor;
* open_clip ViT-B/16: the full-size architecture as a checkpoint file for ``load_clip("ViT-B-16", file)``, and a
  reduced-width copy (same 224 px, patch 16, 512-d output) as a local folder;
* a torchvision ResNet-50 in ``$TORCH_HOME``'s cache under IMAGENET1K_V2's file name, where the real loader looks;
* a tiny ImageNet-style data tree: WordNet-id class folders for train and val (one 500x375 JPEG among them), the
  four MOS OOD folders, and OpenOOD v1.5's image lists with their data roots.

Random weights give meaningless numbers: tests built on these assert that each stage ran on the given data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n02102040")  # ImageNet-1k indices 0, 1 and 217: tench, goldfish, springer
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path, format="JPEG", quality=90)


def build_data(root: Path) -> Path:
    """Write the tiny ImageNet-style tree under ``root`` and return ``root`` (the base of every data root)."""
    seed = 0
    for split, n in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            for i in range(n):
                path = root / "imagenet" / split / wnid / f"{wnid}_{split}_{i}.JPEG"
                if (split, c, i) == ("train", 0, 0):  # a 500x375 photo-like JPEG, denser in bytes than its class
                    path.parent.mkdir(parents=True, exist_ok=True)
                    noise = np.random.default_rng(seed := seed + 1).integers(0, 256, (375, 500, 3), dtype=np.uint8)
                    Image.fromarray(noise).save(path, format="JPEG", quality=90)
                else:
                    _jpeg(path, (96 + 8 * i, 80), seed := seed + 1)
    for folder in ("iNaturalist", "SUN", "Places"):
        for i in range(3):
            _jpeg(root / folder / "images" / f"{folder.lower()}_{i}.jpg", (90, 90), seed := seed + 1)
    for i, texture in enumerate(("banded", "dotted", "striped")):
        _jpeg(root / "dtd" / "images" / texture / f"{texture}_{i}.jpg", (100, 90), seed := seed + 1)
    openood = root / "openood"
    lists = openood / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    large, classic = openood / "images_largescale", openood / "images_classic"
    index = {WNIDS[0]: 0, WNIDS[1]: 1, WNIDS[2]: 217}
    for name, n in (("train", 2), ("test", 2)):
        lines = []
        for wnid in WNIDS:
            for i in range(n):
                rel = f"imagenet_1k/{name}/{wnid}/{wnid}_{i}.JPEG"
                _jpeg(large / rel, (88, 72), seed := seed + 1)
                lines.append(f"{rel} {index[wnid]}")
        (lists / f"{name}_imagenet.txt").write_text("\n".join(lines) + "\n")
    for name, base in (
        ("ssb_hard", large),
        ("ninco", large),
        ("inaturalist", large),
        ("openimage_o", large),
        ("textures", classic),
    ):
        lines = []
        for i in range(3):
            rel = f"{name}/{name}_{i}.jpg"
            _jpeg(base / rel, (80, 80), seed := seed + 1)
            lines.append(f"{rel} 0")  # OpenOOD gives OOD images a label too; benchmarks read them as OOD
        (lists / f"test_{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def clip_tokenizer_files(folder: Path) -> Path:
    """Write OpenAI CLIP's BPE tokenizer (``vocab.json``, ``merges.txt``) derived from open_clip's vocabulary file,
    which reproduces CLIP's token ids: the 256 byte symbols, the same with ``</w>``, the merges, then the two
    special tokens."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def build_sd2_pipeline(folder: Path) -> Path:
    """Save an SD-2-inpainting-shaped pipeline with random weights (see the module docstring)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        attention_head_dim=(1, 2, 2, 2),  # heads per block; one at 64x64 keeps CPU tests fast
        cross_attention_dim=32,
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    words = clip_tokenizer_files(folder / "_bpe")
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=77, pad_token="!")
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "sd2")
    return folder / "sd2"


def build_llava(folder: Path) -> Path:
    """Save a LLaVA-1.5-shaped MLLM (336 px, patch 14) with random weights and a small BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    corpus = [
        "USER: ASSISTANT: Describe everything in this image except the main subject.",
        "grass, water, a wooden fence, trees, the sky, sand, rocks, a road, people, buildings, snow, leaves",
    ]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    backend.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=special))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=336,
            patch_size=14,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token: 577 features, 576 kept by the "default" strategy
        chat_template=LLAVA_TEMPLATE,
    )
    out = folder / "llava"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_vit_b16(folder: Path) -> tuple[Path, Path]:
    """Return ``(full-size ViT-B/16 checkpoint file, reduced-width ViT-B/16 folder)``, both random."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from synood_kit.models import save_clip_folder

    torch.manual_seed(0)
    full = open_clip.create_model("ViT-B-16", pretrained=None)
    checkpoint = folder / "vit_b16_random.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(checkpoint))
    del full
    cfg = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    reduced = open_clip.model.CLIP(**cfg)
    save_clip_folder(reduced, cfg, folder / "vit_b16_reduced", {"size": 224})
    return checkpoint, folder / "vit_b16_reduced"


def install_resnet50(torch_home: Path) -> Path:
    """Put a random ResNet-50 where torchvision's loader finds IMAGENET1K_V2 (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path
