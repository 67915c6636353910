"""One stage's model as a node needs it: an adapter plus how to turn pixels and a question into its
:class:`~cascade_sd_ros.core.spec.StageContext`.

``load_stage_model(source, role)`` takes either a local Hugging Face folder (the shipped zoo, or a real
Video-LLaVA / LLaVA checkpoint: config.json, weights, tokenizer files, preprocessor_config.json) or
``tiny:SEED`` — the seeded tiny random models of :func:`cascade_sd_ros.core.spec.testing.tiny_models`,
which have no tokenizer, so their question ids are derived from the question's bytes. Tiny models
exist for tests and for trying the pipeline before the zoo is trained.

``backend`` picks what runs the model (:data:`BACKENDS`):

* ``cuda-graphs``: :class:`~cascade_sd_ros.core.gpu.verifier.StaticAdapter`, our own Llama step over a
  static KV cache with one CUDA graph per step size (4.9 ms/token for Video-LLaVA-7B on an H200). It
  needs a CUDA device and a LLaVA-family model (VideoLlava or Llava) with a Llama language model;
  asking for it otherwise is a ValueError that says why.
* ``transformers``: :class:`~cascade_sd_ros.core.spec.adapter.HFAdapter` (any device, any model).
* ``auto``: ``cuda-graphs`` where it can run, else ``transformers``.

The choice and its reason travel with the model (:attr:`StageModel.backend`), so a node can log and
report them. ``dtype="auto"`` is bfloat16 on CUDA and float32 elsewhere.

What a stage's token ids mean travels with it too (:attr:`StageModel.vocab`, a :class:`Vocabulary`): a
short fingerprint of its tokenizer's token -> id map and special ids, computed once at load, which
every draft and commit carries so that no stage ever uses ids of another vocabulary
(:func:`check_vocabularies` refuses such a mix at start-up, :func:`source_vocabulary` reads it from a
source's tokenizer alone, without loading weights).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol

import numpy as np
import torch

from cascade_sd_ros.core.spec.adapter import HFAdapter, Modality, ModelAdapter, StageContext
from cascade_sd_ros.core.spec.prompt import TokenizerLike
from cascade_sd_ros.core.spec.text_drafts import TextCodec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, VideoLlavaImageProcessor

Role = Literal["target", "refiner", "drafter"]
ROLES: tuple[Role, ...] = ("target", "refiner", "drafter")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_AUTO = "auto"  # bfloat16 on CUDA, float32 elsewhere
TINY_PREFIX = "tiny:"
Backend = Literal["auto", "cuda-graphs", "transformers"]
BACKENDS: tuple[Backend, ...] = ("auto", "cuda-graphs", "transformers")
# Static-path sizing: text positions a prompt may bring beyond its media placeholders (template +
# question), and caption positions beyond max_new_tokens (drafts never pass max_new_tokens; a margin).
PROMPT_TEXT_TOKENS = 256
CAPTION_MARGIN = 16
STATIC_MAX_STEP = 17  # tokens one graphed forward feeds: drafts of up to 16 plus the bonus position
TINY_VOCAB = 64  # [ids] vocabulary of the tiny:SEED models (every seed: ids mean the same, bytes of the question)
FINGERPRINT_HEX = 16  # [hex digits] of SHA-256 kept as a vocabulary's fingerprint (64 bits)


@dataclass(frozen=True)
class Vocabulary:
    """What a stage's token ids mean: ``fingerprint`` (:data:`FINGERPRINT_HEX` hex digits of SHA-256
    over the token -> id map and the bos/eos/pad/unk ids) is what stages compare; ``summary`` is for
    people ("LlamaTokenizerFast, 32002 ids, eos 2", "zoo tokenizer, 40 ids, eos 3")."""

    fingerprint: str
    summary: str

    def __str__(self) -> str:
        return f"{self.summary} [{self.fingerprint}]"


def _fingerprint(payload: object) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX]


def tokenizer_vocabulary(tokenizer: Any, name: str | None = None, size: int | None = None) -> Vocabulary:
    """The :class:`Vocabulary` of a transformers-style tokenizer (``get_vocab()`` and the
    ``*_token_id`` attributes). A stand-in without ``get_vocab`` (benches' byte tokenizers) is named
    by its class, size (its ``vocab_size``, else ``size``: the model's) and special ids alone.
    ``name`` replaces the class name in the summary."""
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")}
    specials = {k: (int(v) if isinstance(v, int) else None) for k, v in specials.items()}
    kind = name or type(tokenizer).__name__
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        pairs = sorted((int(i), str(t)) for t, i in get_vocab().items())  # [(id, token)], by id
        size = len(pairs)
        digest = _fingerprint({"vocab": pairs, "special": specials})
    else:
        size = int(getattr(tokenizer, "vocab_size", None) or size or 0)
        digest = _fingerprint({"stand-in": type(tokenizer).__qualname__, "size": size, "special": specials})
    eos = f", eos {specials['eos']}" if specials["eos"] is not None else ""
    return Vocabulary(digest, f"{kind}, {size} ids{eos}")


def tiny_vocabulary(vocab_size: int = TINY_VOCAB) -> Vocabulary:
    """The vocabulary of the ``tiny:SEED`` models: no tokenizer, so its size and special ids."""
    from cascade_sd_ros.core.spec.testing import BOS_ID, EOS_ID, PAD_ID

    specials = {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID, "unk": None}
    return Vocabulary(
        _fingerprint({"tiny": int(vocab_size), "special": specials}),
        f"tiny test vocabulary, {vocab_size} ids, eos {EOS_ID}",
    )


def _folder_tokenizer_name(folder: Path) -> str | None:
    return "zoo tokenizer" if (folder / "zoo.json").is_file() else None


def source_vocabulary(source: str) -> Vocabulary | None:
    """The vocabulary of a model source without loading its weights (``tiny:SEED``, or a folder's
    tokenizer); None where the source cannot say (no folder, no tokenizer: the loader will name why)."""
    if source.startswith(TINY_PREFIX):
        return tiny_vocabulary()
    folder = Path(source)
    if not folder.is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        return None
    return tokenizer_vocabulary(tokenizer, _folder_tokenizer_name(folder))


class VocabularyMismatch(ValueError):
    """Stages whose token ids mean different things were put in one cascade."""


def check_vocabularies(vocabs: Mapping[str, Vocabulary | None], reference: str = "target") -> None:
    """Raise :class:`VocabularyMismatch` (one line naming the stages and their vocabularies) unless
    every known vocabulary in ``vocabs`` (stage or role -> Vocabulary; None: unknown, skipped) has
    the fingerprint of ``reference``'s (or, without it, the first known one's)."""
    known = {k: v for k, v in vocabs.items() if v is not None}
    if not known:
        return
    ref_name = reference if reference in known else next(iter(known))
    ref = known[ref_name]
    foreign = [(k, v) for k, v in known.items() if v.fingerprint != ref.fingerprint]
    if foreign:
        others = "; ".join(f"{k} uses {v}" for k, v in foreign)
        raise VocabularyMismatch(
            f"the stages cannot cooperate: {ref_name} uses {ref} but {others}; their token ids mean different "
            f"things, so every stage needs a model with the {ref_name}'s tokenizer"
        )


@dataclass(frozen=True)
class BackendChoice:
    """What runs a stage's model and why: ``name`` is ``cuda-graphs`` or ``transformers``."""

    name: str
    reason: str


@dataclass
class _WarmState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seconds: float | None = None  # set once the model has been warmed up


@dataclass(frozen=True)
class StageModel:
    """An adapter and its context builder; ``num_frames`` is 1 for image stages."""

    role: Role
    adapter: ModelAdapter
    num_frames: int
    image_size: int
    build_context: Callable[[np.ndarray, str], StageContext]  # (uint8 [F,H,W,3] or [H,W,3], question)
    decode: Callable[[list[int]], str]  # caption token ids -> text
    vocab: Vocabulary  # what its token ids mean (computed once, at load)
    backend: BackendChoice = BackendChoice("transformers", "built by the caller")
    codec: TextCodec | None = None  # its tokenizer, for text drafting across vocabularies (None: tiny:SEED)
    _warm: _WarmState = field(default_factory=_WarmState, init=False, repr=False, compare=False)

    def context(self, pixels: np.ndarray, question: str) -> StageContext:
        if self.role == "target":
            if pixels.ndim != 4 or pixels.shape[0] != self.num_frames:
                raise ValueError(f"the target takes {self.num_frames} frames [F, H, W, 3], got {pixels.shape}")
        elif pixels.ndim != 3:
            raise ValueError(f"the {self.role} takes one image [H, W, 3], got {pixels.shape}")
        return self.build_context(pixels, question)

    @property
    def warm_up_s(self) -> float | None:
        """Seconds the warm-up took, None before it ran."""
        return self._warm.seconds

    def warm_up(self, question: str) -> float | None:
        """One prefill of black pixels with ``question``, one decoding step and one verification-sized
        step, so that a node's first round pays none of the first-call costs (kernel selection,
        compiled shapes, allocator growth; the CUDA graphs are captured when the model is loaded).

        Runs once per model, whichever node asks first; returns the seconds it took, or None when
        the model was already warm. A question the model cannot take is an error here, at start-up.
        """
        with self._warm.lock:
            if self._warm.seconds is not None:
                return None
            t0 = time.perf_counter()
            size = self.image_size
            shape = (self.num_frames, size, size, 3) if self.role == "target" else (size, size, 3)
            adapter = self.adapter
            with torch.inference_mode():
                adapter.prefill(self.context(np.zeros(shape, np.uint8), question))
                first = adapter.propose([], 2)  # the first pick comes from the prefill, the second is a step
                token = first.token_ids[0]
                adapter.score([], [token] * 4)  # a verification-sized step
                adapter.propose([token], 1)  # roll back: the caches' crop path
            if adapter.device.type == "cuda":
                torch.cuda.synchronize(adapter.device)
            self._warm.seconds = time.perf_counter() - t0
            return self._warm.seconds


def parse_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``float32``, ``float16``, ``bfloat16``, or ``auto``: bfloat16 on CUDA, float32 elsewhere."""
    if name == DTYPE_AUTO:
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {[DTYPE_AUTO, *sorted(DTYPES)]}, got {name!r}") from None


def parse_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    return name


def choose_backend(requested: str, device: torch.device, role: str, model: object) -> BackendChoice:
    """Which backend runs ``model`` on ``device``, and why.

    ``auto`` takes the static path when it can run and says why not otherwise; an explicit
    ``cuda-graphs`` that cannot be honoured is a ValueError naming the reason.
    """
    from cascade_sd_ros.core.gpu.verifier import static_support

    requested = parse_backend(requested)
    if requested == "transformers":
        return BackendChoice("transformers", "requested (backend=transformers)")
    if device.type != "cuda":
        why = f"device {device}: the static path needs CUDA"
        if requested == "cuda-graphs":
            raise ValueError(f"backend cuda-graphs for the {role}: {why}")
        return BackendChoice("transformers", why)
    unfit = static_support(model)
    if unfit is not None:
        why = f"{role} model is {type(model).__name__}: {unfit}"
        if requested == "cuda-graphs":
            raise ValueError(f"backend cuda-graphs: {why}")
        return BackendChoice("transformers", why)
    how = "requested" if requested == "cuda-graphs" else "auto"
    return BackendChoice("cuda-graphs", f"{how}: device {device}, {type(model).__name__} with a Llama language model")


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N'; a CUDA device on a machine without one is a clear error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a torch device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role


def load_stage_model(
    source: str,
    role: str,
    *,
    device: str = "cpu",
    dtype: str = DTYPE_AUTO,
    backend: str = "auto",
    max_new_tokens: int = 256,
) -> StageModel:
    """Load one stage from a folder or ``tiny:SEED`` on the backend :func:`choose_backend` picks (the
    returned model's ``backend`` says which and why); every problem is a ValueError/FileNotFoundError
    naming the source. ``max_new_tokens`` sizes the static path's caption cache."""
    role = _check_role(role)
    parse_backend(backend)  # a bad value fails before anything loads
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype, torch_device)
    if backend == "cuda-graphs" and torch_device.type != "cuda":
        choose_backend(backend, torch_device, role, None)  # raises the one-line reason, before loading
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    static = _StaticSizing(max_new_tokens)
    if source.startswith(TINY_PREFIX):
        try:
            seed = int(source[len(TINY_PREFIX) :])
        except ValueError:
            raise ValueError(f"model source {source!r}: expected tiny:SEED with an integer seed") from None
        return _tiny_stage(seed, role, torch_device, torch_dtype, backend, static)
    return _folder_stage(Path(source), role, torch_device, torch_dtype, backend, static)


@dataclass(frozen=True)
class _StaticSizing:
    """How the static path's caches are sized for one stage."""

    max_new_tokens: int

    def adapter(
        self, backend: str, device: torch.device, role: Role, hf: HFAdapter, modality: str, num_frames: int
    ) -> tuple[ModelAdapter, BackendChoice]:
        """The adapter ``backend`` asks for over ``hf``'s model: ``hf`` itself, or the static adapter
        with its caches sized for the prompt and caption bounds. Under ``auto`` a model the static
        step refuses at construction falls back to ``hf`` with that reason."""
        choice = choose_backend(backend, device, role, hf.model)
        if choice.name != "cuda-graphs":
            return hf, choice
        try:
            static = sized_static_adapter(
                hf.model, role, modality, num_frames, self.max_new_tokens, eos_token_id=hf.eos_token_id
            )
        except ValueError as exc:
            if backend == "cuda-graphs":
                raise ValueError(f"backend cuda-graphs: the static path refused the {role} model: {exc}") from None
            return hf, BackendChoice("transformers", f"the static path refused the {role} model: {exc}")
        return static, choice


def sized_static_adapter(
    model: object, role: str, modality: str, num_frames: int, max_new_tokens: int, **kwargs: object
) -> ModelAdapter:
    """The static adapter over a LLaVA-family ``model`` with caches sized as the stages size them:
    the media placeholders plus :data:`PROMPT_TEXT_TOKENS` of prompt, ``max_new_tokens`` plus
    :data:`CAPTION_MARGIN` of caption, steps of up to :data:`STATIC_MAX_STEP` tokens. Other keywords
    go to :class:`~cascade_sd_ros.core.gpu.verifier.StaticAdapter` (``use_graphs``, ``compile_blocks``...;
    on a CPU the step runs eagerly)."""
    from cascade_sd_ros.core.gpu.verifier import StaticAdapter
    from cascade_sd_ros.core.spec.prompt import media_token_count

    media = media_token_count(model.config, modality, num_frames)  # type: ignore[attr-defined]
    return StaticAdapter(
        model,  # type: ignore[arg-type]
        max_context=media + PROMPT_TEXT_TOKENS,
        max_caption_tokens=max_new_tokens + CAPTION_MARGIN,
        max_step=STATIC_MAX_STEP,
        modality=modality,  # type: ignore[arg-type]
        name=role,
        **kwargs,  # type: ignore[arg-type]
    )


def _tiny_stage(
    seed: int, role: Role, device: torch.device, dtype: torch.dtype, backend: str, static: _StaticSizing
) -> StageModel:
    from cascade_sd_ros.core.spec.preprocess import make_image_processor, preprocess_image, preprocess_video
    from cascade_sd_ros.core.spec.prompt import expand_placeholder
    from cascade_sd_ros.core.spec.testing import BOS_ID, tiny_models

    tm = tiny_models(seed, TINY_VOCAB, aligned=True, dtype=dtype, device=device)
    hf = {"target": tm.target, "refiner": tm.refiner, "drafter": tm.drafter}[role]
    modality: Modality = "video" if role == "target" else "image"
    num_frames = tm.num_frames if role == "target" else 1
    adapter, choice = static.adapter(backend, device, role, hf, modality, num_frames)
    processor = make_image_processor(tm.image_size)
    vocab = tm.vocab_size
    image_id, video_id = vocab - 2, vocab - 1
    placeholder = video_id if role == "target" else image_id
    count = hf.expected_media_tokens(num_frames)  # the same model and modality as the adapter chosen

    def build(pixels: np.ndarray, question: str) -> StageContext:
        # no tokenizer: the question's bytes pick ordinary text ids [3, V-2), deterministically
        words = [3 + b % (vocab - 5) for b in question.encode("utf-8")[:16]] or [3]
        ids = expand_placeholder([BOS_ID, placeholder, *words], placeholder, count)
        if modality == "video":
            pv = preprocess_video(processor, pixels)
        else:
            pv = preprocess_image(processor, pixels)
        return StageContext(ids, pv.to(dtype), modality)

    def decode(token_ids: list[int]) -> str:
        return " ".join(f"<{t}>" for t in token_ids)

    return StageModel(role, adapter, num_frames, tm.image_size, build, decode, tiny_vocabulary(tm.vocab_size), choice)


def _folder_stage(
    folder: Path, role: Role, device: torch.device, dtype: torch.dtype, backend: str, static: _StaticSizing
) -> StageModel:
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.spec.adapter import load_hf_model

    if not folder.is_dir():
        raise FileNotFoundError(f"{role} model folder {folder} does not exist")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{role} model folder {folder} has no preprocessor_config.json")
    from cascade_sd_ros.core.eventgpt import is_eventgpt_folder

    if is_eventgpt_folder(folder):
        return _eventgpt_stage(folder, role, device, dtype, backend)
    model = load_hf_model(folder, device=device, dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{role} model folder {folder}: no usable tokenizer ({exc})") from None
    processor = folder_image_processor(folder)
    return stage_model_from_hf(
        model,
        role,
        tokenizer,
        processor,
        backend=backend,
        max_new_tokens=static.max_new_tokens,
        source=str(folder),
        vocab=tokenizer_vocabulary(tokenizer, _folder_tokenizer_name(folder)),
    )


def _eventgpt_stage(folder: Path, role: Role, device: torch.device, dtype: torch.dtype, backend: str) -> StageModel:
    """An EventGPT release folder as an image stage (event images in, the drafter's place)."""
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.eventgpt import EventGPTAdapter, eventgpt_prompt_ids, load_eventgpt
    from cascade_sd_ros.core.spec.preprocess import preprocess_image

    if role == "target":
        raise ValueError(
            f"target model in {folder} is EventGPT, which takes event images; the target needs a video model"
        )
    if backend == "cuda-graphs":
        raise ValueError(
            f"backend cuda-graphs: the {role} model in {folder} is EventGPT, which the static path does not "
            "serve (backend auto or transformers)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{role} model folder {folder}: no usable tokenizer ({exc})") from None
    model = load_eventgpt(folder, device, dtype)
    adapter = EventGPTAdapter(model, placeholder_id=int(tokenizer.unk_token_id), name=role)
    processor = folder_image_processor(folder)
    positions = adapter.expected_media_tokens(1)

    def build(pixels: np.ndarray, question: str) -> StageContext:
        ids = eventgpt_prompt_ids(tokenizer, question, positions)
        return StageContext(ids, preprocess_image(processor, pixels).to(dtype), "image")

    def decode(token_ids: list[int]) -> str:
        return str(tokenizer.decode(token_ids, skip_special_tokens=True))

    why = "EventGPT runs on transformers' Llama (the static path serves LLaVA-family models)"
    return StageModel(
        role,
        adapter,
        1,
        model.image_size,
        build,
        decode,
        tokenizer_vocabulary(tokenizer),
        BackendChoice("transformers", why),
        tokenizer,  # type: ignore[arg-type]  # transformers types decode str | list[str] (batches)
    )


def folder_image_processor(folder: Path) -> VideoLlavaImageProcessor:
    """The folder's pixel pipeline as a ``VideoLlavaImageProcessor`` (torchvision-free): CLIP-style
    configs (Video-LLaVA, LLaVA-1.5, EventGPT: shortest-edge resize, centre crop) load as they are;
    a SigLIP config (llava-interleave-qwen, LLaVA-OneVision: a plain resize to height x width, no
    crop, mean and std 0.5) becomes the same steps with the crop turned off."""
    from transformers import VideoLlavaImageProcessor
    from transformers.image_utils import PILImageResampling

    spec = json.loads((folder / "preprocessor_config.json").read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{folder}/preprocessor_config.json is not a JSON object")
    kind = str(spec.get("image_processor_type", ""))
    if not kind.startswith("Siglip"):
        return VideoLlavaImageProcessor.from_pretrained(folder, local_files_only=True)
    size = spec.get("size") or {}
    try:
        hw = {"height": int(size["height"]), "width": int(size["width"])}
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{folder}/preprocessor_config.json: {kind} needs size.height and size.width, got {size!r}"
        ) from None
    return VideoLlavaImageProcessor(
        do_resize=bool(spec.get("do_resize", True)),
        size=hw,
        resample=PILImageResampling(int(spec.get("resample", 3))),
        do_center_crop=False,
        crop_size=hw,
        do_rescale=bool(spec.get("do_rescale", True)),
        rescale_factor=float(spec.get("rescale_factor", 1 / 255)),
        do_normalize=bool(spec.get("do_normalize", True)),
        image_mean=spec.get("image_mean", [0.5, 0.5, 0.5]),
        image_std=spec.get("image_std", [0.5, 0.5, 0.5]),
    )


class CaptionTokenizer(TokenizerLike, Protocol):
    """What a stage needs of a tokenizer: ``encode`` for the question, ``decode`` for the caption."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> object: ...


def stage_model_from_hf(
    model: PreTrainedModel,
    role: str,
    tokenizer: CaptionTokenizer,
    processor: VideoLlavaImageProcessor,
    *,
    backend: str = "auto",
    max_new_tokens: int = 256,
    source: str = "memory",
    vocab: Vocabulary | None = None,
) -> StageModel:
    """A stage over a transformers model already on its device and in its dtype (what
    :func:`load_stage_model` does after loading a folder; benches hand it models built in memory).

    ``tokenizer`` needs ``encode`` (mapping "<video>"/"<image>" to the config's placeholder ids as one
    token each) and ``decode``; ``processor`` sets the pixel statistics and the image size. ``vocab``
    defaults to :func:`tokenizer_vocabulary` of ``tokenizer``.
    """
    from cascade_sd_ros.core.spec.adapter import HFAdapter
    from cascade_sd_ros.core.spec.preprocess import preprocess_image, preprocess_video
    from cascade_sd_ros.core.spec.prompt import build_prompt_ids

    role = _check_role(role)
    parse_backend(backend)
    hf = HFAdapter(model, name=role)
    want: Modality = "video" if role == "target" else "image"
    if want == "video" and hf.modality != "video":
        raise ValueError(f"target model in {source} is a {hf.modality} model; the target needs a video model")
    if hf.modality == "text":
        raise ValueError(f"{role} model in {source} is text-only; the {role} needs an image model")
    hf.modality = want  # a video model also serves single images
    config = hf.model.config
    dtype = hf.model.dtype
    num_frames = 1
    if want == "video":
        vision = config.vision_config
        per_frame = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1
        seq = getattr(config, "video_seq_length", None)
        num_frames = int(seq) // per_frame if seq else 8
    adapter, choice = _StaticSizing(max_new_tokens).adapter(backend, hf.device, role, hf, want, num_frames)
    crop = processor.crop_size
    image_size = int(crop["height"]) if isinstance(crop, dict) else int(crop.height)

    def build(pixels: np.ndarray, question: str) -> StageContext:
        ids = build_prompt_ids(tokenizer, question, want, config, num_frames)
        pv = preprocess_video(processor, pixels) if want == "video" else preprocess_image(processor, pixels)
        return StageContext(tuple(int(i) for i in ids), pv.to(dtype), want)

    def decode(token_ids: list[int]) -> str:
        return str(tokenizer.decode(token_ids, skip_special_tokens=True))

    vocab = vocab if vocab is not None else tokenizer_vocabulary(tokenizer, size=hf.vocab_size)
    codec = (
        tokenizer
        if callable(getattr(tokenizer, "decode", None)) and callable(getattr(tokenizer, "encode", None))
        else None
    )
    return StageModel(role, adapter, num_frames, image_size, build, decode, vocab, choice, codec)  # type: ignore[arg-type]  # its encode/decode are checked callable just above


def default_stage_source(role: str) -> str:
    """The shipped zoo's folder for ``role`` (what an empty ``model`` parameter means)."""
    from cascade_sd_ros.core.zoo import default_zoo_path

    return str(Path(default_zoo_path()) / _check_role(role))
