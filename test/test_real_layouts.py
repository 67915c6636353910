"""Real checkpoint layouts, in miniature (issue 16): Video-LLaVA-7B-hf, llava-1.5-7b-hf,
llava-interleave-qwen (a foreign vocabulary) and an EventGPT release folder load through
``load_stage_model`` from their own files, with placeholders, processors and vocabularies right, and
draft in a cascade whose output is exactly the target's -- by ids where the vocabularies agree, by
text where they do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mini_checkpoints as mc

from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.spec.text_drafts import TextDrafter
from cascade_sd_ros.core.stage_model import StageModel, load_stage_model, source_vocabulary

QUESTION = "describe the scene"
MAX_NEW = 12


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mini")
    return {
        "video_llava": mc.video_llava_hf(root / "video_llava"),
        "llava15": mc.llava_15_hf(root / "llava15"),
        "qwen": mc.llava_qwen(root / "qwen"),
        "eventgpt": mc.eventgpt(root / "eventgpt"),
    }


def _scene(seed: int, frames: int = mc.FRAMES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(frames, 40, 48, 3), dtype=np.uint8)


def test_vocabularies_agree_and_differ_as_the_real_families_do(folders: dict[str, Path]) -> None:
    v = {name: source_vocabulary(str(f)) for name, f in folders.items()}
    assert all(x is not None for x in v.values())
    assert v["eventgpt"] == v["video_llava"]  # both Vicuna's tokenizer
    assert v["llava15"].fingerprint != v["video_llava"].fingerprint  # type: ignore[union-attr]  # its extra <pad>
    assert v["qwen"].fingerprint not in {x.fingerprint for k, x in v.items() if k != "qwen"}  # type: ignore[union-attr]


def test_placeholders_are_expanded_per_family(folders: dict[str, Path]) -> None:
    target = load_stage_model(str(folders["video_llava"]), "target")
    ctx = target.context(_scene(0), QUESTION)
    video_id = target.adapter.model.config.video_token_index  # type: ignore[attr-defined]
    assert target.num_frames == mc.FRAMES and ctx.input_ids.count(video_id) == mc.FRAMES * (4 + 1)  # CLS per frame
    qwen = load_stage_model(str(folders["qwen"]), "drafter")
    ctx = qwen.context(_scene(0)[0], QUESTION)
    image_id = qwen.adapter.model.config.image_token_index  # type: ignore[attr-defined]
    assert ctx.input_ids.count(image_id) == 4  # SigLIP, "full" features: patches, no CLS
    im_start = qwen.adapter.model.config.text_config  # type: ignore[attr-defined]
    assert im_start.model_type == "qwen2" and ctx.input_ids[0] == mc.qwen_tokenizer().convert_tokens_to_ids(
        "<|im_start|>"
    )  # ChatML turns for a Qwen2 language model, not Vicuna's USER:/ASSISTANT:
    assert tuple(ctx.pixel_values.shape) == (1, 3, mc.IMAGE_SIZE, mc.IMAGE_SIZE)  # type: ignore[union-attr]


def test_the_siglip_pipeline_equals_transformers_own_on_a_real_frame(folders: dict[str, Path]) -> None:
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from cascade_sd_ros.core.spec.preprocess import preprocess_image
    from cascade_sd_ros.core.stage_model import folder_image_processor
    from cascade_sd_ros.core.synth.scene import render_frame, sample_scene

    spec = sample_scene(np.random.default_rng(3))
    frame = render_frame(spec, 0.5, 60, 80)  # a rendered scene, not square: the resize matters
    ours = preprocess_image(folder_image_processor(folders["qwen"]), frame)
    theirs = SiglipImageProcessorPil.from_pretrained(folders["qwen"])(images=[frame], return_tensors="pt")
    assert torch.allclose(ours, theirs["pixel_values"], atol=2e-2)


def _cascade_equals_target(target: StageModel, drafter: object, drafter_ctx: object, seeds: range) -> int:
    decoder = CascadeDecoder([drafter, target.adapter])  # type: ignore[list-item]
    drafted = 0
    for seed in seeds:
        clip = _scene(seed)
        tctx = target.context(clip, QUESTION)
        ref = target_only_greedy(target.adapter, tctx, MAX_NEW)
        res = decoder.generate([drafter_ctx(clip), tctx], MAX_NEW)  # type: ignore[operator]
        assert res.token_ids == ref, seed
        drafted += res.stats.stages[0].drafted
    return drafted


def test_eventgpt_loads_from_its_release_layout_and_drafts_for_video_llava(folders: dict[str, Path]) -> None:
    drafter = load_stage_model(str(folders["eventgpt"]), "drafter")
    assert drafter.backend.name == "transformers" and "EventGPT" in drafter.backend.reason
    target = load_stage_model(str(folders["video_llava"]), "target")
    assert drafter.vocab == target.vocab
    drafted = _cascade_equals_target(target, drafter.adapter, lambda clip: drafter.context(clip[0], QUESTION), range(2))
    assert drafted > 0


def test_eventgpt_weights_and_event_tokens_are_the_releases(folders: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from cascade_sd_ros.core.eventgpt import load_eventgpt, spatio_temporal_tokens

    model = load_eventgpt(folders["eventgpt"], torch.device("cpu"), torch.float32)
    saved = load_file(str(folders["eventgpt"] / "model.safetensors"))
    assert torch.equal(model.projector[2].weight, saved["model.visual_projector.2.weight"])
    assert model.adaptor is not None and torch.equal(model.adaptor.weight, saved["model.feature_adaptor.weight"])
    key = "model.visual_tower.visual_tower.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(model.tower.embeddings.patch_embedding.weight, saved[key])
    feats = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # [T=2, S=3, C=1]
    tokens = spatio_temporal_tokens(feats).view(-1).tolist()
    assert tokens == [1.0, 4.0, 1.5, 2.5, 3.5]  # per-frame means, then per-position means
    assert model.positions(1) == 1 + 4 + 1  # one frame token, 4 patches + CLS


def test_eventgpt_is_refused_where_it_cannot_serve_and_never_unpickled(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    with pytest.raises(ValueError, match="target needs a video model"):
        load_stage_model(str(folders["eventgpt"]), "target")
    copy = tmp_path / "eventgpt"
    shutil.copytree(folders["eventgpt"], copy)
    (copy / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (open, (str(marker), "w"))

    torch.save({"lm_head.weight": Payload()}, copy / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin refused"):
        load_stage_model(str(copy), "drafter")
    assert not marker.exists()


def test_a_foreign_vocabulary_family_drafts_by_text_for_video_llava(folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    target = load_stage_model(str(folders["video_llava"]), "target")
    qwen = load_stage_model(str(folders["qwen"]), "drafter")
    assert qwen.vocab.fingerprint != target.vocab.fingerprint
    text = TextDrafter(
        qwen.adapter,
        AutoTokenizer.from_pretrained(folders["qwen"]),
        AutoTokenizer.from_pretrained(folders["video_llava"]),
        target.adapter.vocab_size,
        target.adapter.eos_token_id,
    )
    _cascade_equals_target(target, text, lambda clip: qwen.context(clip[0], QUESTION), range(2))


def test_llava_15_refines_for_video_llava_by_text_too(folders: dict[str, Path]) -> None:
    """The real llava-1.5-hf and Video-LLaVA-hf tokenizers differ by one token (<pad>), so their
    fingerprints differ and the refiner's drafts cross as text: words, not ids."""
    from transformers import AutoTokenizer

    target = load_stage_model(str(folders["video_llava"]), "target")
    llava = load_stage_model(str(folders["llava15"]), "refiner")
    text = TextDrafter(
        llava.adapter,
        AutoTokenizer.from_pretrained(folders["llava15"]),
        AutoTokenizer.from_pretrained(folders["video_llava"]),
        target.adapter.vocab_size,
        target.adapter.eos_token_id,
    )
    _cascade_equals_target(target, text, lambda clip: llava.context(clip[-1], QUESTION), range(1))


def test_eventgpt_prefill_takes_a_draft_in_hand_as_every_adapter_does(folders: dict[str, Path]) -> None:
    # the adapter interface's prefill(context, caption): the caption's rows scored after one call
    drafter = load_stage_model(str(folders["eventgpt"]), "drafter")
    adapter, ctx = drafter.adapter, drafter.context(_scene(3)[0], QUESTION)
    adapter.prefill(ctx)
    caption = list(adapter.propose([], 3).token_ids)
    reference = adapter.propose(caption, 2).token_ids
    adapter.prefill(ctx, caption=caption)
    assert adapter.propose(caption, 2).token_ids == reference
