"""Model shapes, build_model round trips, freezing of the sentiment encoder, LR schedule."""
from __future__ import annotations

import json

import pytest
import torch

from dlspark.models import build_model, model_spec
from dlspark.train.schedule import lr_factor, scaled_lr


@pytest.mark.parametrize("spec, shape", [
    ({"name": "cnn", "in_channels": 1, "num_classes": 10}, (4, 1, 28, 28)),
    ({"name": "cnn", "in_channels": 3, "num_classes": 5, "widths": [8, 16]}, (2, 3, 32, 32)),
    ({"name": "resnet", "variant": "tiny", "in_channels": 1, "num_classes": 10}, (2, 1, 28, 28)),
])
def test_image_models_shape_and_round_trip(spec, shape):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(*shape)
    logits = model(x)
    assert logits.shape == (shape[0], spec["num_classes"])
    spec_back = json.loads(json.dumps(model_spec(model)))  # JSON-able
    twin = build_model(spec_back).eval()
    twin.load_state_dict(model.state_dict())
    assert torch.allclose(twin(x), logits)


def test_channels_last_gives_same_logits():
    model = build_model({"name": "cnn", "in_channels": 3, "num_classes": 4}).eval()
    x = torch.randn(2, 3, 16, 16)
    nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(nhwc, model(x), atol=1e-5)


@pytest.mark.parametrize("spec", [{"name": "vgg"}, {"name": "cnn", "depth": 3}, {"name": "resnet", "variant": "resnet7"}])
def test_build_model_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        build_model(spec)


def test_sentiment_model_freeze_and_unfreeze():
    model = build_model({"name": "minilm", "num_classes": 2})
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 6:] = 0
    assert model(ids, mask).shape == (3, 2)
    model.freeze_encoder()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    model.unfreeze_top_layers(2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = {n.split(".")[3] for n in trainable if n.startswith("encoder.encoder.layer.")}
    assert layers == {"4", "5"} and "encoder.embeddings.word_embeddings.weight" not in trainable
    with pytest.raises(ValueError, match="unfreeze_top_layers"):
        model.unfreeze_top_layers(7)


def test_sentiment_padding_does_not_change_the_pooled_output():
    model = build_model({"name": "minilm", "num_classes": 2}).eval()
    ids = torch.randint(1000, 2000, (1, 6))
    short = model(ids, torch.ones(1, 6, dtype=torch.long))
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    padded = model(padded_ids, torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long())
    assert torch.allclose(short, padded, atol=1e-4)


def test_lr_warmup_then_cosine():
    factors = [lr_factor(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] < 0.05 and lr_factor(100, 4, 20) == 0.0
    assert scaled_lr(0.1, 4, "linear") == pytest.approx(0.4) and scaled_lr(0.1, 4, "none") == 0.1
