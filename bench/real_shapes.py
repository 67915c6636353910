"""Real-checkpoint shapes on one GPU, random bf16 weights (issue 16's H200 check): a Video-LLaVA-7B-hf
target with an EventGPT-7B drafter and a TinyLLaVA-1.1B drafter. Each model is built at its release
shape on the device, one round runs per drafter (prefill, a gamma-token draft, one verification) and
the stage's GPU memory is recorded: weights alone and the peak of its round.

    .venv/bin/python bench/real_shapes.py --device cuda --json      # the H200 check (about a minute)
    .venv/bin/python bench/real_shapes.py --scale tiny              # the same code path on a CPU

Random weights say nothing about acceptance; this measures what loads and what memory each stage needs.
Without tokenizers the drafts cross as ids, so every model gets the target's 32,064-row vocabulary
(EventGPT's and TinyLLaVA's own 32,000 rows differ by half a megabyte).
Shapes (release configs): Video-LLaVA-7B-hf = Llama-7B (4096 wide, 32 layers, vocab 32064) with two
CLIP ViT-L/14 towers at 224 px, 8 frames (2,056 video positions); EventGPT-7B = Llama-7B (vocab 32000)
with CLIP ViT-L/14 at 336 px, the 1024 -> 4096 -> 4096 GELU projector and the 4096 feature adaptor;
TinyLLaVA-1.1B = TinyLlama (2048 wide, 22 layers, 4 KV heads) with SigLIP-so400m at 384 px.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout

from cascade_sd_ros.core.eventgpt import EventGPT, EventGPTAdapter  # noqa: E402
from cascade_sd_ros.core.spec.adapter import HFAdapter, StageContext  # noqa: E402
from cascade_sd_ros.core.spec.engine import CascadeDecoder  # noqa: E402
from cascade_sd_ros.core.spec.prompt import expand_placeholder, media_token_count  # noqa: E402

GAMMA = 5
MAX_NEW = 8
SCALES = {  # name -> (llama 7B, tinyllama, clip-L, siglip-so400m)
    "real": dict(
        llama=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
        tiny=dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
        ),
        clip=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14
        ),
        siglip=dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=14
        ),
        sizes=dict(video=224, eventgpt=336, siglip=384),
        vocab=32064,
    ),
    "tiny": dict(
        llama=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
        ),
        tiny=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
        ),
        clip=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, patch_size=14),
        siglip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14),
        sizes=dict(video=28, eventgpt=42, siglip=28),
        vocab=1024,
    ),
}
IMAGE_ID, VIDEO_ID = 32000, 32001  # Video-LLaVA-7B-hf's placeholders (TinyLLaVA's image id: 32000 too)


def _gb(n: int) -> float:
    return round(n / 2**30, 2)


def _mem(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def build_models(scale: str, device: torch.device, dtype: torch.dtype) -> dict[str, tuple[object, int]]:
    """name -> (adapter, weight bytes) at ``scale``'s shapes, built on ``device`` in ``dtype``."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
    )

    s = SCALES[scale]
    vocab = s["vocab"]
    out: dict[str, tuple[object, int]] = {}
    torch.manual_seed(0)
    with torch.device(device):
        before = _mem(device)
        cfg = VideoLlavaConfig(
            text_config=LlamaConfig(vocab_size=vocab, **s["llama"]).to_dict(),
            vision_config=CLIPVisionConfig(image_size=s["sizes"]["video"], **s["clip"]).to_dict(),
            image_token_index=IMAGE_ID % vocab,
            video_token_index=VIDEO_ID % vocab,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        target = VideoLlavaForConditionalGeneration(cfg).to(dtype).eval()
        out["target"] = (HFAdapter(target, name="target", modality="video", eos_token_id=2), _mem(device) - before)
        before = _mem(device)
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **s["llama"]))
        tower = CLIPVisionModel(CLIPVisionConfig(image_size=s["sizes"]["eventgpt"], **s["clip"]))
        width, clip_w = s["llama"]["hidden_size"], s["clip"]["hidden_size"]
        projector = torch.nn.Sequential(torch.nn.Linear(clip_w, width), torch.nn.GELU(), torch.nn.Linear(width, width))
        eventgpt = EventGPT(lm, tower, projector, torch.nn.Linear(width, width)).to(dtype).eval()
        out["eventgpt"] = (EventGPTAdapter(eventgpt, placeholder_id=0, name="eventgpt"), _mem(device) - before)
        before = _mem(device)
        cfg = LlavaConfig(
            text_config=LlamaConfig(vocab_size=vocab, **s["tiny"]).to_dict(),
            vision_config=SiglipVisionConfig(image_size=s["sizes"]["siglip"], **s["siglip"]).to_dict(),
            image_token_index=IMAGE_ID % vocab,
            vision_feature_layer=-2,
            vision_feature_select_strategy="full",
        )
        tiny = LlavaForConditionalGeneration(cfg).to(dtype).eval()
        out["tinyllava"] = (HFAdapter(tiny, name="tinyllava", modality="image", eos_token_id=2), _mem(device) - before)
    return out


def _context(
    adapter: object, modality: str, size: int, frames: int, device: torch.device, dtype: torch.dtype
) -> StageContext:
    vocab = int(adapter.vocab_size)  # type: ignore[attr-defined]
    text = [t % vocab for t in (1, 3148, 1001, 29901, 29871)]  # bos + a few ordinary ids ("USER: ")
    if isinstance(adapter, EventGPTAdapter):
        n = adapter.expected_media_tokens(1)
        return StageContext(
            (*text, *([0] * n), 13, 4220 % vocab), torch.randn(1, 3, size, size, device=device, dtype=dtype), "image"
        )
    config = adapter.model.config  # type: ignore[attr-defined]
    placeholder = config.video_token_index if modality == "video" else config.image_token_index
    ids = expand_placeholder(
        [*text, placeholder, 13, 4220 % vocab], placeholder, media_token_count(config, modality, frames)
    )
    shape = (1, frames, 3, size, size) if modality == "video" else (1, 3, size, size)
    return StageContext(ids, torch.randn(*shape, device=device, dtype=dtype), modality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), default="real")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    models = build_models(args.scale, device, dtype)
    sizes = SCALES[args.scale]["sizes"]
    target = models["target"][0]
    tctx = _context(target, "video", sizes["video"], 8, device, dtype)
    rows = {name: {"weights_gb": _gb(w)} for name, (_, w) in models.items()}
    for name, size in (("eventgpt", sizes["eventgpt"]), ("tinyllava", sizes["siglip"])):
        drafter = models[name][0]
        dctx = _context(drafter, "image", size, 1, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        res = CascadeDecoder([drafter, target], gamma=GAMMA, adaptive=False).generate([dctx, tctx], MAX_NEW)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows[name].update(
            round_s=round(time.perf_counter() - start, 3),
            caption_tokens=len(res.token_ids),
            drafted=res.stats.stages[0].drafted,
            accepted=res.stats.stages[0].accepted,
            peak_gb=_gb(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        )
    result = {
        "device": str(device),
        "scale": args.scale,
        "dtype": str(dtype).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "stages": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
