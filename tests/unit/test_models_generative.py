"""The generative digits models: the shipped VAE and diffusion U-Net against the digits
CNN judge, the Fréchet distance, and their ONNX exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.families import get_family
from export.onnx import export_onnx, ort_runner
from export.parity import check_elementwise, torch_outputs
from models import digit_unet, digit_vae
from models.digits_data import load_split
from models.digits_gen import (
    IMAGE_SIZE,
    NULL_CLASS,
    conditional_accuracy,
    downsample,
    frechet_distance,
    judge_features,
    sample_labels,
    upsample,
)
from models.eval_generation import DEFAULT_GUIDANCE, diffusion_samples, vae_samples
from server.pipelines.ddim import NoiseSchedule


def test_upsample_downsample_shapes_and_range() -> None:
    x8 = load_split().x_test[:5]
    x16 = upsample(x8)
    assert x16.shape == (5, 1, IMAGE_SIZE, IMAGE_SIZE) and x16.dtype == np.float32
    assert 0.0 <= x16.min() and x16.max() <= 1.0
    assert np.array_equal(upsample(x8), x16)
    assert downsample(x16).shape == (5, 1, 8, 8)
    assert np.abs(downsample(x16) - x8).mean() < 0.1  # a light blur of the original


def test_shipped_vae_decodes_the_requested_digit() -> None:
    labels = sample_labels(10)
    assert conditional_accuracy(vae_samples(digit_vae.load(), labels, seed=1), labels) >= 0.8
    torch.manual_seed(0)
    assert conditional_accuracy(vae_samples(digit_vae.DigitVAE().eval(), labels, seed=1), labels) < 0.8


def test_shipped_unet_samples_the_requested_digit_with_the_server_sampler() -> None:
    labels = sample_labels(2)
    images = diffusion_samples(digit_unet.load(), labels, 10, DEFAULT_GUIDANCE, seed=1000)
    assert images.shape == (20, 1, IMAGE_SIZE, IMAGE_SIZE) and 0.0 <= images.min() and images.max() <= 1.0
    assert conditional_accuracy(images, labels) >= 0.8
    torch.manual_seed(0)
    untrained = diffusion_samples(digit_unet.DigitUNet().eval(), labels, 10, DEFAULT_GUIDANCE, seed=1000)
    assert conditional_accuracy(untrained, labels) < 0.8


def test_unet_config_carries_the_noise_schedule(tmp_path) -> None:
    config = digit_unet.DigitUNetConfig(channels=(8, 16, 16), emb_dim=16, groups=4, beta_end=0.03)
    model = digit_unet.DigitUNet(config).eval()
    digit_unet.save(model, tmp_path / "u.safetensors")
    loaded = digit_unet.load(tmp_path / "u.safetensors")
    assert loaded.config == config and loaded.schedule() == NoiseSchedule(1000, 1e-4, 0.03)
    assert digit_unet.load().schedule() == NoiseSchedule()
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 500, 999]), torch.tensor([1, 2, NULL_CLASS])
    assert torch.equal(model(x, t, y), loaded(x, t, y))


@torch.no_grad()
def test_vae_encoder_embeds_images_only() -> None:
    vae = digit_vae.load()
    x = torch.from_numpy(upsample(load_split().x_test[:4]))
    emb = digit_vae.VAEEncoder(vae)(x)
    assert emb.shape == (4, vae.config.latent_dim)
    img = digit_vae.VAEDecoder(vae)(emb, torch.arange(4))
    assert img.shape == (4, 1, 16, 16) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_frechet_distance_self_zero_noise_far() -> None:
    split = load_split()
    _, real = judge_features(upsample(split.x_test))
    _, train = judge_features(upsample(split.x_train))
    noise = np.random.default_rng(0).uniform(size=(450, 1, 16, 16)).astype(np.float32)
    _, noise_feats = judge_features(noise)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-3)
    real_vs_real = frechet_distance(train, real)
    assert frechet_distance(noise_feats, real) > 10 * real_vs_real


@pytest.mark.parametrize("name", ["digits_vae_encoder", "digits_vae_decoder", "digits_unet"])
def test_generative_family_exports_match_torch(name: str) -> None:
    family = get_family(name)
    module = family.build(None)
    model = export_onnx(module, family.spec)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    run = ort_runner(model, family.spec)
    report = check_elementwise("fp32", module, run, family.spec, family.held_out()[0])
    assert report.passed and report.max_abs_err < 1e-4
    held = family.held_out()[0]
    feed = {k: v[:5] for k, v in held.items()}
    np.testing.assert_allclose(run(feed)[0], torch_outputs(module, family.spec, feed)[0], atol=1e-4)
