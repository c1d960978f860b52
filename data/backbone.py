"""Frozen timm backbones for `create_db.py`: creation, local weights, eval transform, embedding.

The embedding of an image is the model's pooled pre-logits output
(`forward_head(forward_features(x), pre_logits=True)`), in eval mode without gradients, after
timm's eval transform for the model's data config. The transform is split in two: its PIL steps
(resize, crop) run per image in worker threads on uint8 images, its tensor steps (to float,
normalize) run batched on the model's device with the same arithmetic.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
from PIL import Image
from torchvision import transforms as T

from data.images import IMAGE_CONVERSION, decode_image
from data.source_base import Images
from utils.io import sha256_file

DEFAULT_BACKBONE = "vit_base_patch14_dinov2.lvd142m"
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "state_dict_ema")


class BackboneError(ValueError):
    """Bad backbone input (name, weights file, device); the message names the flag or file."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is cuda when available, else cpu; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BackboneError(f"--device {name}: not a torch device (try auto, cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackboneError(f"--device {name}: MPS is not available on this machine")
    return device


def model_kwargs(name: str) -> dict:
    """Extra timm.create_model arguments: DINOv2 models run at 224 px (timm defaults to 518)."""
    return {"img_size": 224} if "dinov2" in name else {}


def check_model_name(name: str) -> None:
    """Raise BackboneError for a name timm does not know, suggesting close names."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(pretrained=True), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise BackboneError(f"--backbone {name}: unknown timm model{hint}")


# ----------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (.safetensors, or torch.load with weights_only=True).

    Common wrappers (`{"state_dict": ...}`, `{"model": ...}`) and a `module.` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"--weights {path}: file not found")
    obj: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a readable checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"--weights {path}: not a readable checkpoint ({first})") from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise BackboneError(f"--weights {path}: expected a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BackboneError(f"--weights {path}: entry '{bad[0]}' is not a tensor")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _counter(name: str) -> bool:
    """BatchNorm's `num_batches_tracked` counters: not weights, often absent from checkpoints."""
    return name.endswith("num_batches_tracked")


def _timm_filter(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """Apply the model family's timm checkpoint filter (name conversion, position-embedding
    resampling), as timm does when it loads pretrained weights; unchanged if there is none."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return dict(fn(dict(state), model))
    except Exception:  # noqa: BLE001 - a filter that does not apply leaves the names as they are
        return state


def load_weights(model: torch.nn.Module, path: str | Path, name: str = "") -> str:
    """Load a local checkpoint into `model`; return how: "names" or "order".

    Tensor names matching timm's load by name (after timm's filter for the family); otherwise,
    when both hold the same number of tensors with equal shapes one to one in order, they load
    by order. Anything else raises BackboneError naming the first mismatch.
    """
    path = Path(path)
    raw = read_state_dict(path)
    target = {k: v for k, v in model.state_dict().items() if not _counter(k)}
    label = f"--weights {path}"
    arch = f" --backbone {name}" if name else " this backbone"

    named = {k: v for k, v in _timm_filter(raw, model).items() if not _counter(k)}
    if set(named) == set(target):
        for key, want in target.items():
            if named[key].shape != want.shape:
                raise BackboneError(
                    f"{label}: tensor '{key}' has shape {tuple(named[key].shape)}, "
                    f"{arch.strip()} expects {tuple(want.shape)}"
                )
        _load_strict(model, named)
        return "names"

    ordered = [(k, v) for k, v in raw.items() if not _counter(k)]
    if len(ordered) != len(target):
        only_file = next((k for k, _ in ordered if k not in target), None)
        only_model = next((k for k in target if k not in raw), None)
        raise BackboneError(
            f"{label}: holds {len(ordered)} tensors,{arch} has {len(target)}; names differ "
            f"(first only in the file: {only_file!r}, first only in the model: {only_model!r}); "
            "is the checkpoint for another architecture?"
        )
    for i, ((key, value), (want_key, want)) in enumerate(zip(ordered, target.items())):
        if value.shape != want.shape:
            raise BackboneError(
                f"{label}: tensor {i} '{key}' has shape {tuple(value.shape)} but{arch}'s "
                f"'{want_key}' has shape {tuple(want.shape)}; is the checkpoint for another "
                "architecture?"
            )
    _load_strict(model, {want_key: value for (_, value), want_key in zip(ordered, target)})
    return "order"


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    full = dict(state)
    for key, value in model.state_dict().items():
        if _counter(key):
            full.setdefault(key, value)
    model.load_state_dict(full, strict=True)


# ----------------------------------------------------------------------------- transform


def data_config(model: torch.nn.Module) -> dict:
    """timm's data config of the model, with the input size the model was built for.

    timm reports the pretrained config's size (518 for DINOv2) even when the model was created
    with another `img_size`; a fixed-size ViT only accepts its own.
    """
    cfg = dict(timm.data.resolve_data_config(model=model))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None and tuple(cfg["input_size"][1:]) != tuple(img_size):
        cfg["input_size"] = (cfg["input_size"][0], *img_size)
    return cfg


def split_eval_transform(cfg: dict) -> tuple[T.Compose, tuple[float, ...], tuple[float, ...]]:
    """timm's eval transform as (PIL steps, mean, std): the steps before ToTensor, and the
    Normalize after it, which `Backbone.to_input` applies batched on the device."""
    transform = timm.data.create_transform(**cfg, is_training=False)
    steps = list(transform.transforms)
    cut = next(i for i, t in enumerate(steps) if isinstance(t, T.ToTensor))
    rest = steps[cut + 1 :]
    if len(rest) != 1 or not isinstance(rest[0], T.Normalize):
        raise RuntimeError(f"unexpected timm eval transform after ToTensor: {rest}")
    mean = tuple(float(m) for m in torch.as_tensor(rest[0].mean).flatten())
    std = tuple(float(s) for s in torch.as_tensor(rest[0].std).flatten())
    return T.Compose(steps[:cut]), mean, std


def to_pil(item: np.ndarray | bytes) -> Image.Image:
    """A uint8 array (H x W, H x W x 1 or 3) or encoded image bytes as an L or RGB PIL image
    (bytes: any Pillow format or DICOM, converted as data/images.py says).

    Grayscale stays single-channel until after resizing (resampling is per channel, so this is
    the same as repeating it to RGB first, at a third of the cost).
    """
    if isinstance(item, bytes | bytearray):
        return decode_image(item, str(getattr(item, "path", "image bytes")))
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected a uint8 H x W or H x W x 3 image, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


# ----------------------------------------------------------------------------- backbone


@dataclass
class Backbone:
    """A frozen timm model on its device, with the preprocessing its embeddings need."""

    name: str
    model: torch.nn.Module
    device: torch.device
    data_config: dict
    pil_transform: Callable[[Image.Image], Image.Image]
    mean: torch.Tensor  # 1 x 3 x 1 x 1, on device
    std: torch.Tensor
    weights: str  # the weights file (absolute path), "hub" or "random"
    weights_sha256: str | None
    weights_loaded_by: str | None  # "names" or "order" for a weights file
    embedding_dim: int = 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return tuple(self.data_config["input_size"][1:])

    def prepare(self, item: np.ndarray | bytes) -> np.ndarray:
        """The PIL steps of the eval transform: one image to uint8 H x W x 3 at the input size."""
        return self.prepare_batch([item])[0]

    def prepare_batch(self, items: Images) -> np.ndarray:
        """`prepare` for a batch, as one uint8 B x H x W x 3 array."""
        h, w = self.image_size
        batch = np.empty((len(items), h, w, 3), dtype=np.uint8)
        for j, item in enumerate(items):
            out = np.asarray(self.pil_transform(to_pil(item)))
            batch[j] = out[:, :, None] if out.ndim == 2 else out
        return batch

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 B x H x W x 3 to the normalized float input, as ToTensor + Normalize compute it."""
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":  # pinned: the copy queues behind running work, no wait
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = x.permute(0, 3, 1, 2).contiguous().float().div(255)
        return x.sub(self.mean).div(self.std)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features of a normalized input batch."""
        model: Any = self.model  # a timm model (forward_features, forward_head)
        return model.forward_head(model.forward_features(x), pre_logits=True)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (float32 B x D) of a prepared uint8 batch."""
        return fetch(self.forward(self.to_input(batch)))

    def embed_images(
        self, images: Sequence[np.ndarray | bytes], batch_size: int = 64
    ) -> np.ndarray:
        """Embeddings of raw images (no worker threads): for notebooks and tests."""
        out = [
            self.embed(self.prepare_batch(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)


def fetch(embeddings: torch.Tensor) -> np.ndarray:
    """A forward pass's output as float32 numpy (waits for the device to finish it)."""
    return embeddings.float().cpu().numpy()


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Backbone:
    """Create a frozen timm backbone: weights from a local file, random (seeded), or the hub.

    Without a file and without network (e.g. HF_HUB_OFFLINE=1) it fails fast, saying to pass
    --weights FILE.
    """
    check_model_name(name)
    if weights is not None and random_init:
        raise BackboneError("--weights and --random_init exclude each other")
    device = resolve_device(device) if isinstance(device, str) else device
    kwargs = model_kwargs(name)
    sha, loaded_by = None, None
    if weights is None and not random_init:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - hub, network and cache errors alike
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise BackboneError(
                f"--backbone {name}: cannot fetch pretrained weights from the Hugging Face hub"
                f"{offline}: {type(err).__name__}; pass --weights FILE with a local checkpoint "
                "(.pth/.pt/.bin/.safetensors), or --random_init for a smoke run"
            ) from None
        source = "hub"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
        source = "random"
        if weights is not None:
            path = Path(weights).resolve()
            loaded_by = load_weights(model, path, name)
            source, sha = str(path), sha256_file(path)
    model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    cfg = data_config(model)
    pil_steps, mean, std = split_eval_transform(cfg)
    backbone = Backbone(
        name=name,
        model=model,
        device=device,
        data_config=cfg,
        pil_transform=pil_steps,
        mean=torch.tensor(mean, device=device).view(1, -1, 1, 1),
        std=torch.tensor(std, device=device).view(1, -1, 1, 1),
        weights=source,
        weights_sha256=sha,
        weights_loaded_by=loaded_by,
    )
    probe = backbone.forward(torch.zeros(1, *cfg["input_size"], device=device))
    if probe.ndim != 2:
        raise BackboneError(
            f"--backbone {name}: pre-logits output has shape {tuple(probe.shape)}; "
            "expected a pooled N x D embedding"
        )
    backbone.embedding_dim = int(probe.shape[1])
    return backbone


def preprocessing(backbone: Backbone) -> dict:
    """How images become the backbone's input: timm's eval transform (its data config), the
    batched normalization, and the conversion of image files to 8-bit L/RGB (data/images.py).
    Sites whose databases differ in it (or in backbone or weights) are not pooled."""
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()}
    return {
        "transform": "timm eval transform (PIL resize/crop), then ToTensor + Normalize batched",
        "data_config": cfg,
        "image_conversion": IMAGE_CONVERSION,
    }
