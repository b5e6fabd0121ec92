"""The four architectures: output shapes on 8x8 and 28x28 images (and tokens), and each one's
ability to fit 64 samples exactly through the shared LightningModule."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import ALL_ARCHITECTURES, Architecture, DataParams, ModelsParams
from components.data.sources.digits import load_digits
from components.models import (
    RawPixelClassifier,
    build_model,
    class_probabilities,
    config_from_dict,
    config_to_dict,
    count_parameters,
    inference_device,
    model_config,
)
from components.models.cnn import CNNConfig
from components.training.batches import TensorBatches
from components.training.module import Classifier


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_output_is_one_logit_row_per_image(arch: Architecture, shape: tuple[int, int, int]) -> None:
    config = model_config(arch, ModelsParams(), shape, num_classes=10)
    model = build_model(arch, config)
    logits = model(torch.randn(5, *shape))
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_every_architecture_takes_token_ids_when_the_data_give_a_vocabulary(arch: Architecture) -> None:
    config = model_config(arch, ModelsParams(), (12,), num_classes=3, vocab_size=50)
    model = build_model(arch, config)
    tokens = torch.randint(0, 50, (4, 12))  # (B, T)
    assert model(tokens).shape == (4, 3)


def test_cnn_padding_follows_the_image_size() -> None:
    # 28x28 keeps the classic valid convolutions (28 -> 26 -> 13 -> 11 -> 5) ...
    large = CNNConfig(input_shape=(1, 28, 28), num_classes=10)
    assert (large.conv_padding, large.feature_shape) == (0, (64, 5, 5))
    # ... 8x8 would vanish without padding, so it gets "same" convolutions (8 -> 4 -> 2).
    small = CNNConfig(input_shape=(1, 8, 8), num_classes=10)
    assert (small.conv_padding, small.feature_shape) == (1, (64, 2, 2))
    with pytest.raises(ValueError, match="too small"):
        _ = CNNConfig(input_shape=(1, 4, 4), num_classes=10, channels=(8, 8, 8)).feature_shape


@pytest.mark.parametrize(
    ("shape", "patch_size", "padding"),
    [((1, 8, 8), 4, 1), ((1, 28, 28), 14, 0), ((3, 32, 32), 16, 0), ((1, 28, 20), 14, 0)],
)
def test_auto_settings_resolve_from_the_image_shape_into_the_saved_config(
    shape: tuple[int, int, int], patch_size: int, padding: int
) -> None:
    models = ModelsParams()  # patch_size and padding: auto
    transformer = model_config("transformer", models, shape, num_classes=10)
    cnn = model_config("cnn", models, shape, num_classes=10)
    assert config_to_dict(transformer)["patch_size"] == patch_size
    assert config_to_dict(cnn)["padding"] == padding  # model.json holds the chosen value
    assert build_model("transformer", config_from_dict("transformer", config_to_dict(transformer)))


def test_explicit_values_replace_auto_and_one_that_does_not_fit_is_refused() -> None:
    models = ModelsParams.model_validate({"transformer": {"patch_size": 14}, "cnn": {"padding": 1}})
    assert model_config("transformer", models, (1, 28, 28), num_classes=10).patch_size == 14  # type: ignore[union-attr]
    assert config_to_dict(model_config("cnn", models, (1, 28, 28), num_classes=10))["padding"] == 1
    valid = ModelsParams.model_validate({"cnn": {"padding": 0}})
    with pytest.raises(ValueError, match="too small for 2 conv\\+pool stages with padding 0"):
        model_config("cnn", valid, (1, 8, 8), num_classes=10)


def test_a_model_json_from_before_the_padding_key_keeps_its_shape_rule() -> None:
    saved = {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16]}  # no "padding"
    config = config_from_dict("cnn", saved)
    assert isinstance(config, CNNConfig)
    assert config.conv_padding == 1


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_config_round_trips_through_json_form(arch: Architecture) -> None:
    config = model_config(arch, ModelsParams(), (1, 28, 28), num_classes=10)
    again = config_from_dict(arch, config_to_dict(config))
    assert again == config
    assert count_parameters(build_model(arch, again)) == count_parameters(build_model(arch, config))


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    split = load_digits(DataParams(), Path()).splits["all"]
    x = torch.from_numpy(split.images[:n].astype(np.float32) / 16.0)  # (n, 1, 8, 8)
    labels = torch.from_numpy(split.labels[:n].astype(np.int64))
    return x, F.one_hot(labels, 10).float(), labels


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_each_architecture_overfits_64_samples(arch: Architecture) -> None:
    """Loss falls and training accuracy reaches 100%: the model, the loss on one-hot targets and
    the optimiser are wired correctly."""
    L.seed_everything(0, verbose=False)
    x, y, labels = _digits(64)
    models = ModelsParams.model_validate({"transformer": {"dropout": 0.0}})
    network = build_model(arch, model_config(arch, models, (1, 8, 8), num_classes=10))
    module = Classifier(network, num_classes=10, learning_rate=3e-3, weight_decay=0.0, batch_size=32)
    with torch.no_grad():
        loss_before = F.cross_entropy(module(x), y).item()
    trainer = L.Trainer(
        max_steps=300,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        module,
        train_dataloaders=TensorBatches(x, y, batch_size=32, seed=0, shuffle=True),
        val_dataloaders=TensorBatches(x, y, batch_size=64, seed=0, shuffle=False),
    )
    module.eval()
    with torch.no_grad():
        logits = module(x)
    assert F.cross_entropy(logits, y).item() < loss_before / 10
    assert (logits.argmax(dim=1) == labels).float().mean().item() == 1.0


def test_written_out_softmax_matches_torch_softmax_and_cannot_overflow() -> None:
    logits = torch.randn(4096, 10, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 50.0, 1e4):  # 1e4: exp of an unshifted logit would be inf
        expected = torch.softmax(logits * scale, dim=1)
        got = class_probabilities(logits * scale)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(got).all()
        assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))


def test_raw_pixel_classifier_normalises_as_preprocessing_did() -> None:
    network = build_model("mlp", model_config("mlp", ModelsParams(), (2, 4, 4), num_classes=3)).eval()
    mean, std = [3.0, -1.0], [2.0, 0.5]
    pixels = torch.rand(6, 2, 4, 4) * 16  # (B, C, H, W) raw
    normalised = (pixels - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(1, 2, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(network(normalised), dim=1)
        got = RawPixelClassifier(network, mean, std)(pixels)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("arch", "shape", "folds"),
    [
        ("mlp", (2, 8, 8), True),
        ("lstm", (2, 7, 5), True),
        ("transformer", (2, 8, 16), True),  # patches of 8: no padding
        ("transformer", (2, 9, 9), False),  # patches of 5, padded to 10x10: normalised zeros
        ("cnn", (2, 8, 8), False),  # its convolutions zero-pad the normalised image
    ],
)
def test_folding_the_normalisation_into_the_first_layer_gives_the_same_probabilities(
    arch: Architecture, shape: tuple[int, int, int], folds: bool
) -> None:
    torch.manual_seed(0)
    network = build_model(arch, model_config(arch, ModelsParams(), shape, num_classes=5)).eval()
    for parameter in network.parameters():  # trained-looking weights, not the initial ones
        parameter.data.add_(torch.randn_like(parameter) * 0.1)
    mean, std = [100.0, 20.0], [60.0, 5.0]  # per channel, far apart: a channel mix-up shows
    pixels = torch.rand(16, *shape) * torch.tensor([255.0, 40.0]).view(1, 2, 1, 1)  # (B, C, H, W) raw
    with torch.no_grad():
        normalising = RawPixelClassifier(network, mean, std)
        expected = normalising(pixels)
        folded = RawPixelClassifier(copy.deepcopy(network), mean, std, fold_normalisation=True)
        got = folded(pixels)
    assert not normalising.folded
    assert folded.folded is folds
    pairs = zip(network.state_dict().values(), folded.network.state_dict().values(), strict=True)
    assert any(not torch.equal(before, after) for before, after in pairs) is folds  # rewritten iff folded
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_inference_device_reads_model_config_and_refuses_what_it_cannot_run_on() -> None:
    assert inference_device(None) == inference_device({}) == inference_device({"device": "auto"})
    assert inference_device({"device": "auto"}).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert inference_device({"device": "cpu"}) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"model_config\['device'\] = 'tpu'"):
        inference_device({"device": "tpu"})
    with pytest.raises(ValueError, match="no such CUDA device"):
        inference_device({"device": f"cuda:{torch.cuda.device_count()}"})  # one past the last


@pytest.mark.parametrize(("shape", "dropped"), [((12,), True), ((1, 8, 8), False)])
def test_mlp_dropout_reaches_the_bag_of_embeddings_but_not_the_pixels(
    shape: tuple[int, ...], dropped: bool
) -> None:
    vocab = 50 if len(shape) == 1 else None
    models = ModelsParams.model_validate({"mlp": {"dropout": 0.5}})
    model = build_model("mlp", model_config("mlp", models, shape, num_classes=3, vocab_size=vocab))
    seen: list[torch.Tensor] = []
    model.net[1].register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))  # first hidden layer
    x = torch.randint(1, 50, (4, *shape)) if vocab else torch.randn(4, *shape)
    torch.manual_seed(0)
    model(x)
    model.eval()
    model(x)
    training, inference = seen
    assert (inference != 0).all()
    zeroed = (training == 0).float().mean()
    assert zeroed > 0.3 if dropped else zeroed == 0  # about half of the features, or none


@pytest.mark.parametrize("shape", [(1, 8, 8), (12,)])
def test_lstm_dropout_acts_in_training_only(shape: tuple[int, ...]) -> None:
    vocab = 50 if len(shape) == 1 else None
    models = ModelsParams.model_validate({"lstm": {"dropout": 0.5}})
    model = build_model("lstm", model_config("lstm", models, shape, num_classes=3, vocab_size=vocab))
    x = torch.randint(1, 50, (4, *shape)) if vocab else torch.randn(4, *shape)
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))  # training: two draws of the masks
    model.eval()
    assert torch.equal(model(x), model(x))
