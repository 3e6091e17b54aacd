"""The pixel-space autoencoder (exact space-to-depth) and the raster VQ baseline."""

import numpy as np
import pytest
import torch

from selftok_hf.evaluation.raster_vq import RasterVQAutoencoder, train_raster_vq
from selftok_hf.pixel_space import PixelSpaceAutoencoder
from selftok_hf.vae import pixels_to_latents


def test_pixel_space_round_trip_layout_and_save_load(tmp_path):
    vae = PixelSpaceAutoencoder(patch_size=2)
    x = torch.rand(2, 3, 4, 6) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert z.shape == (2, 12, 2, 3) and vae.config.latent_channels == 12
    # Channel c * 4 + (dy * 2 + dx) of cell (i, j) is pixel (2i + dy, 2j + dx) of channel c.
    assert z[1, 2 * 4 + 1 * 2 + 0, 1, 2] == x[1, 2, 2 * 1 + 1, 2 * 2 + 0]
    assert torch.equal(vae.encode(x).latent_dist.sample(), z)
    assert torch.equal(vae.decode(z).sample, x)
    assert torch.equal(pixels_to_latents(vae, x, 2.0, 0.5), (z - 0.5) * 2.0)
    vae.save_pretrained(tmp_path)
    again = PixelSpaceAutoencoder.from_pretrained(tmp_path)
    assert again.config.latent_channels == 12 and again.dtype == torch.float32
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 5, 4))
    with pytest.raises(ValueError, match="latent_channels"):
        PixelSpaceAutoencoder(patch_size=2, latent_channels=3)


class _FixedBatches:
    def __init__(self, pixels):
        self.pixels = pixels

    def batch(self, step):
        return self.pixels


def test_raster_vq_shapes_and_learning():
    torch.manual_seed(0)
    model = RasterVQAutoencoder(image_size=16, downsample=4, channels=16, codebook_size=16, code_dim=8)
    y, x = np.mgrid[0:16, 0:16] / 16
    pixels = torch.tensor(np.stack([x, y, x * y]), dtype=torch.float32)[None].repeat(4, 1, 1, 1) * 2 - 1
    pixels[1:] = pixels[1:].flip(-1) * torch.linspace(0.2, 1, 3)[:, None, None, None]
    ids = model.encode(pixels)
    assert ids.shape == (4, 16) and ids.dtype == torch.long and int(ids.max()) < 16
    assert model.decode(ids).shape == (4, 3, 16, 16)
    before = torch.nn.functional.mse_loss(model.eval()(pixels)[0], pixels).item()
    history = []
    train_raster_vq(model, _FixedBatches(pixels), 60, learning_rate=3e-3, log_every=60, history=history)
    after = torch.nn.functional.mse_loss(model.decode(model.encode(pixels)), pixels).item()
    assert after < 0.5 * before, (before, after)
    assert history[-1]["step"] == 60
    with pytest.raises(ValueError, match="power of two"):
        RasterVQAutoencoder(image_size=16, downsample=3)
