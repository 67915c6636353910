"""Save and load the draft head + alignment MLP: one safetensors file and head.json, nothing pickled.

The folder (the zoo ships `zoo/head/`) holds `model.safetensors` (tensors `head.*` and `align.*`)
and `head.json` (the `HeadConfig`, the fingerprints of the target and event encoder it was trained
against, training figures). `encoder_fingerprint` names the event encoder + alignment weights (the pair
trained together); `event_encoder_fingerprint` names the event encoder alone, which is what a drafter
node can name (it runs the encoder, not the MLP): EventFeatures.encoder_fingerprint carries it, and a
verifier refuses features whose encoder is not the one its head.json records (`event_encoder`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlavaForConditionalGeneration, PreTrainedModel

from cascade_sd_ros.core.head.model import AlignmentMLP, FusedDraftHead, HeadConfig

__all__ = [
    "HEAD_JSON",
    "WEIGHTS",
    "save_head",
    "load_head",
    "encoder_fingerprint",
    "event_encoder_fingerprint",
    "tensor_fingerprint",
]

HEAD_JSON = "head.json"
WEIGHTS = "model.safetensors"


FINGERPRINT_SAMPLES = 4096  # [elements] per tensor, evenly spaced


def tensor_fingerprint(modules: list[nn.Module], length: int = 16, samples: int = FINGERPRINT_SAMPLES) -> str:
    """SHA-256 (hex prefix) over the names and shapes of the modules' tensors and the float32 values of
    up to ``samples`` evenly spaced elements of each.

    A sample, not every byte: hashing a 7B target whole meant a float32 copy of it on the host at
    configure time (28 GB), and two trainings differ at nearly every element anyway. The indices are
    integer arithmetic, so the CPU and a GPU pick the same elements; float32 values make a bf16 and
    a float32 load of one checkpoint agree."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            n = flat.numel()
            if n > samples:
                idx = torch.arange(samples, dtype=torch.int64) * (n - 1) // (samples - 1)
                flat = flat[idx.to(flat.device)]
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(flat.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def encoder_fingerprint(drafter: LlavaForConditionalGeneration, align: AlignmentMLP) -> str:
    """Names the event encoder (the drafter's vision tower + projector) and the alignment weights."""
    parts: list[nn.Module] = [drafter.model.vision_tower, drafter.model.multi_modal_projector, align]
    return tensor_fingerprint(parts)


def event_encoder_fingerprint(drafter: PreTrainedModel) -> str:
    """Names the event encoder alone (a LLaVA drafter's vision tower + projector): what made the event
    tokens a drafter node publishes. ValueError (one line) for a model without that pair."""
    inner = getattr(drafter, "model", None)
    tower = getattr(inner, "vision_tower", None)
    projector = getattr(inner, "multi_modal_projector", None)
    if not isinstance(tower, nn.Module) or not isinstance(projector, nn.Module):
        raise ValueError(f"{type(drafter).__name__} has no vision tower + projector: it makes no event tokens")
    return tensor_fingerprint([tower, projector])


def save_head(folder: Path, head: FusedDraftHead, align: AlignmentMLP, meta: dict[str, Any]) -> None:
    """Write the head and the MLP (float32 safetensors) and head.json into `folder` (replaced whole)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update({f"align.{k}": v.detach().cpu().contiguous() for k, v in align.state_dict().items()})
    save_file(tensors, str(tmp / WEIGHTS))
    (tmp / HEAD_JSON).write_text(json.dumps({"config": head.cfg.to_dict(), **meta}, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    tmp.rename(folder)


def load_head(folder: str | Path, device: str | torch.device = "cpu") -> tuple[FusedDraftHead, AlignmentMLP, dict]:
    """(head, alignment MLP, head.json) from `folder`; one-line errors name the folder and the problem."""
    folder = Path(folder)
    meta_path, weights = folder / HEAD_JSON, folder / WEIGHTS
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"draft-head folder {folder} lacks {HEAD_JSON} or {WEIGHTS}")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = HeadConfig(**meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a draft-head description ({exc})") from exc
    tensors = load_file(str(weights), device=str(device))
    head, align = FusedDraftHead(cfg), AlignmentMLP(cfg)
    for prefix, module in (("head.", head), ("align.", align)):
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights}: weights do not fit head.json's config ({str(exc).splitlines()[0]})") from exc
    return head.to(device).eval(), align.to(device).eval(), meta
