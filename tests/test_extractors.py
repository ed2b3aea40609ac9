"""StyleExtractor: CNN and transformers backbones, tokens, shuffling, IO and identity, metrics_style."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit.extractors import (
    DEFAULT_PATH,
    ExtractorCheckpointError,
    ExtractorConfig,
    StyleExtractor,
    clip_text_embeddings,
    content_shuffle,
    grad_reverse,
    load_default,
    load_embeddings,
    save_embeddings,
    select_tokens,
    style_direction,
    subtract_content,
)
from stylekit.metrics_style import (
    pair_auc,
    probe_accuracy,
    retrieval_metrics,
    style_retrieval,
    style_similarity,
)

SMALL = dict(
    image_size=32, widths=(8, 16), pooled_stages=(0, 1), embed_dim=12, head_hidden=16, content_head=True
)


@pytest.fixture(scope="module")
def cnn() -> StyleExtractor:
    torch.manual_seed(0)
    return StyleExtractor(ExtractorConfig(**SMALL)).eval()


@pytest.fixture(scope="module")
def clip_extractor() -> StyleExtractor:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    return StyleExtractor.from_vision_model(CLIPVisionModelWithProjection(config), embed_dim=24).eval()


def test_cnn_outputs_shapes_normalised_and_deterministic(cnn):
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = cnn(pixels)
    assert out.embedding.shape == (3, 12) and out.tokens.shape == (3, 8 * 8, 12)
    assert out.content_logits.shape == (3, 30)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    a, b = cnn.embed(pixels), cnn.embed(pixels, batch_size=1)
    assert torch.allclose(a, b, atol=1e-6) and torch.equal(a, cnn.embed(pixels))


def test_embed_accepts_any_mode_and_size(cnn, tmp_path):
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 57, 4), dtype=np.uint8), "RGBA")
    gray16 = Image.fromarray(np.arange(50 * 30, dtype=np.uint16).reshape(50, 30) * 40)
    path = tmp_path / "p.png"
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).convert("P").save(path)
    emb = cnn.embed([rgba, gray16, str(path), np.zeros((9, 13), np.float32), torch.rand(3, 17, 17)])
    assert emb.shape == (5, 12) and torch.isfinite(emb).all()
    world = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    assert cnn.embed(world, progress=True).shape == (2, 12)
    with pytest.raises(ValueError, match="images\\[0\\]"):
        cnn.embed(["/no/such/file.png"])


def test_batched_pixels_are_checked_and_scaled_like_single_images(cnn):
    world = np.random.default_rng(2).integers(0, 255, (2, 32, 48, 3), dtype=np.uint8)
    one_by_one = cnn.embed(list(world))  # each image covered and centre-cropped
    assert torch.allclose(cnn.embed(world), one_by_one, atol=1e-5)
    assert torch.allclose(cnn.embed(torch.from_numpy(world).permute(0, 3, 1, 2)), one_by_one, atol=1e-5)
    square = world[:, :, :32]
    assert torch.allclose(cnn.embed(square.astype(np.float32) / 255), cnn.embed(square), atol=1e-6)
    for bad, message in (
        (square.astype(np.float32), "float pixels must be in \\[0, 1\\], got \\[.*\\] \\(values 0..255"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros((1, 3, 32, 32), dtype=torch.int64), "expected uint8 or float"),
    ):
        with pytest.raises(ValueError, match=message):
            cnn.embed(bad)


def test_hf_clip_backbone_tokens_and_prompt_filter(clip_extractor):
    pixels = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))  # resized to 32
    out = clip_extractor(pixels)
    assert out.embedding.shape == (2, 24) and out.tokens.shape == (2, 16, 24) and out.content_logits is None
    text = torch.randn(16, generator=torch.Generator().manual_seed(2))
    least = clip_extractor.style_tokens(pixels, text, keep_ratio=0.5)
    most = clip_extractor.style_tokens(pixels, text, keep_ratio=0.5, keep="most_similar")
    assert least.shape == most.shape == (2, 8, 24)
    # the two halves partition the patches: together they are all tokens, in some order
    both = torch.cat([least, most], 1).sort(dim=1).values
    assert torch.allclose(both, out.tokens.sort(dim=1).values, atol=1e-5)
    assert clip_extractor.style_tokens(pixels, text).shape == (2, 1, 24)  # default ratio 0.05 of 16 -> 1
    with pytest.raises(ValueError, match=r"\(24,\).*16-d"):
        clip_extractor.style_tokens(pixels, torch.randn(24))


def test_select_tokens_keeps_least_or_most_similar():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]]])
    tokens = torch.arange(4.0).view(1, 4, 1)
    text = torch.tensor([1.0, 0.0])
    kept, idx = select_tokens(tokens, keys, text, keep_ratio=0.5, keep="least_similar")
    assert idx.tolist() == [[1, 3]] and kept.flatten().tolist() == [1.0, 3.0]
    _, idx = select_tokens(tokens, keys, text, keep_ratio=0.5, keep="most_similar")
    assert idx.tolist() == [[0, 2]]


def test_clip_text_embeddings_filter_in_joint_space(clip_extractor):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from stylekit.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(["red", "star"], model_max_length=16)
    text_model = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            projection_dim=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    text = clip_text_embeddings(text_model, tokenizer, ["a red star", "a star"])
    assert text.shape == (2, 16)
    pixels = torch.rand(2, 3, 32, 32)
    assert clip_extractor.style_tokens(pixels, text, keep_ratio=0.25).shape == (2, 4, 24)
    embeds = clip_extractor.clip_image_embeddings(pixels)
    sub = clip_extractor.clip_image_embeddings(pixels, text, scale=0.5)
    assert torch.allclose(sub, embeds - 0.5 * text, atol=1e-6)


def test_vit_backbone_without_joint_space_filters_in_token_space(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        add_pooling_layer=False,
    )
    extractor = StyleExtractor.from_vision_model(vit, embed_dim=8).eval()
    pixels = torch.rand(2, 3, 32, 32)
    assert extractor.style_tokens(pixels, torch.randn(8), keep_ratio=0.25).shape == (2, 4, 8)
    with pytest.raises(ValueError, match="visual_projection"):
        extractor.clip_image_embeddings(pixels)
    extractor.save_pretrained(tmp_path)
    assert torch.equal(StyleExtractor.from_pretrained(tmp_path).embed(pixels), extractor.embed(pixels))


def test_subtract_content_formula_and_space_check():
    image, text = torch.randn(3, 8), torch.randn(8)
    assert torch.allclose(subtract_content(image, text, 0.7), image - 0.7 * text)
    with pytest.raises(ValueError, match=r"\(3, 8\).*\(6,\)"):
        subtract_content(image, torch.randn(6))


def test_content_shuffle_tiles_and_flow():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tiles = content_shuffle(x, "tiles", grid=4, seed=3)
    assert torch.equal(tiles, content_shuffle(x, "tiles", grid=4, seed=3))
    assert not torch.equal(tiles, x)
    for b in range(2):  # a permutation of whole 4x4 tiles: the same multiset of tiles
        t_in = x[b].unfold(1, 4, 4).unfold(2, 4, 4).reshape(3, 16, 16).permute(1, 0, 2).flatten(1)
        t_out = tiles[b].unfold(1, 4, 4).unfold(2, 4, 4).reshape(3, 16, 16).permute(1, 0, 2).flatten(1)
        assert sorted(map(tuple, t_in.tolist())) == sorted(map(tuple, t_out.tolist()))
    flow = content_shuffle(x, "flow", grid=4, seed=3)
    assert flow.shape == x.shape and torch.equal(flow, content_shuffle(x, "flow", grid=4, seed=3))
    assert float(flow.min()) >= 0 and float(flow.max()) <= 1
    shuffled = StyleExtractor(ExtractorConfig(**SMALL, shuffle="tiles")).eval()
    assert shuffled(torch.rand(2, 3, 32, 32)).embedding.shape == (2, 12)


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))


def test_save_load_identity_and_wrong_architecture(cnn, clip_extractor, tmp_path):
    cnn.save_pretrained(tmp_path / "cnn")
    loaded = StyleExtractor.from_pretrained(tmp_path / "cnn")
    assert loaded.identity() == cnn.identity() and loaded.config_hash() == cnn.config_hash()
    pixels = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.embed(pixels), cnn.embed(pixels))
    meta = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert meta["_identity"] == cnn.identity()
    other = StyleExtractor(ExtractorConfig(**{**SMALL, "widths": (8, 24)}))
    with pytest.raises(
        ExtractorCheckpointError, match=r"shape \(16, 8, 3, 3\) in the checkpoint but \(24, 8, 3, 3\)"
    ):
        other.load_weights(tmp_path / "cnn" / "model.safetensors")
    with pytest.raises(ExtractorCheckpointError, match="missing|unexpected|shape"):
        clip_extractor.load_weights(tmp_path / "cnn" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="not a saved StyleExtractor"):
        StyleExtractor.from_pretrained(tmp_path)
    clip_extractor.save_pretrained(tmp_path / "clip")
    again = StyleExtractor.from_pretrained(tmp_path / "clip")
    assert torch.equal(
        again.embed(torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)).diff(dim=0), torch.zeros(1, 24)
    )


def test_embeddings_saved_with_identity_and_checked(cnn, tmp_path):
    emb = cnn.embed(torch.rand(4, 3, 32, 32))
    path = save_embeddings(tmp_path / "e.safetensors", emb, cnn, metadata={"what": "test"})
    loaded, meta = load_embeddings(path, cnn)
    assert torch.equal(loaded, emb) and meta["identity"] == cnn.identity() and meta["what"] == "test"
    other = StyleExtractor(ExtractorConfig(**{**SMALL, "embed_dim": 10}))
    with pytest.raises(ValueError, match=r"shape \(4, 12\).*\(N, 10\)"):
        load_embeddings(path, other)
    retrained = StyleExtractor(ExtractorConfig(**SMALL))  # same architecture, other weights
    with pytest.raises(ValueError, match="strict=False"):
        load_embeddings(path, retrained)
    assert load_embeddings(path, retrained, strict=False)[0].shape == (4, 12)
    with pytest.raises(ValueError, match=r"shape \(4, 7\), expected \(N, 12\)"):
        save_embeddings(tmp_path / "bad.safetensors", torch.zeros(4, 7), cnn)
    from_numpy = save_embeddings(tmp_path / "np.safetensors", emb.numpy(), cnn)  # arrays are taken too
    assert torch.equal(load_embeddings(from_numpy, cnn)[0], emb)


def test_style_direction_is_difference_of_means(cnn):
    a, b = torch.rand(3, 3, 32, 32), torch.rand(2, 3, 32, 32)
    direction = style_direction(cnn, a, b)
    assert torch.allclose(direction, cnn.embed(a).mean(0) - cnn.embed(b).mean(0), atol=1e-6)
    from stylekit.conditioning import StyleCondition

    assert StyleCondition(embedding=direction).embedding.shape == (12,)


def test_retrieval_metrics_standard_ap_and_csd_map_at_k():
    # one query, ranking: rel, non, rel, non ; 3 relevant items in total (one never retrieved high)
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1]])
    rel = torch.tensor([[True, False, True, False, True]])
    out = retrieval_metrics(sim, rel, ks=(1, 2, 4))
    assert out["map_at_1"] == 1.0 and out["map_at_2"] == pytest.approx((1 + 0.5) / 2)
    assert out["map_at_4"] == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 4) / 4)  # CSD: mean precision@1..k
    assert out["ap_at_4"] == pytest.approx((1 + 2 / 3) / 3)  # standard AP@k: over min(k, R) = 3
    assert out["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)  # standard AP over the full ranking
    assert out["recall_at_1"] == 1.0 and out["mrr"] == 1.0 and out["precision_at_2"] == 0.5


def test_probe_and_auc_helpers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.eye(3)[y] + 0.1 * rng.standard_normal((300, 3))
    assert probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert (
        probe_accuracy(rng.standard_normal((200, 3)), y[:200], rng.standard_normal((100, 3)), y[200:]) < 0.6
    )
    assert pair_auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and pair_auc([0.5], [0.5]) == 0.5
    pos, neg = rng.random(40), rng.random(50)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert pair_auc(pos, neg) == pytest.approx(brute)


def test_bundled_extractor_measures_world_styles():
    from stylekit.data import StyleSpec, style_set

    weights = DEFAULT_PATH / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 10 * 2**20
    extractor = load_default()
    assert load_default() is extractor  # loaded once
    rng = np.random.default_rng(0)
    styles = [StyleSpec.from_index(i) for i in (2, 18, 93, 150, 309, 552)]  # held-out styles
    sets = [style_set(rng, 4, s) for s in styles]
    images = np.concatenate([s.images for s in sets])
    labels = np.repeat(np.arange(6), 4)
    emb = extractor.embed(images)
    out = style_retrieval(emb, emb, labels, labels, ks=(1, 3), exclude_self=True)
    assert out["map_at_1"] >= 0.8
    for ks in ((0,), (), (1.5,)):
        with pytest.raises(ValueError, match="ks: expected integers >= 1"):
            style_retrieval(emb, emb, labels, labels, ks=ks)
    for ks in (np.array([1, 3]), (np.int64(1), np.int64(3)), (k for k in (1, 3))):
        assert style_retrieval(emb, emb, labels, labels, ks=ks, exclude_self=True) == out
    same = style_similarity(images[0:1], images[1:2])
    different = style_similarity(images[0:1], images[4:5])
    assert float(same) > float(different)
    with pytest.raises(ValueError, match=rf"\(2, 5\).*\(N, {extractor.embed_dim}\)"):
        style_similarity(torch.zeros(2, 5), torch.zeros(2, 5), extractor=extractor)
    with pytest.raises(ValueError, match="b: no images or embeddings"):  # was torch.cat's error
        style_similarity(images[0:1], images[:0])
