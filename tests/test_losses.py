"""CRAFTS' L_corr / L_cate and the diffusion-loss helpers against small hand-computed cases (B = 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_crafts.training import losses  # noqa: E402

E = torch.eye(3)
e1, e2, e3 = E[0], E[1], E[2]


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_cosine_matrix_of_orthogonal_identical_and_opposite_vectors():
    m = losses.cosine_matrix(torch.stack([e1, 5 * e1, -2 * e1, e2]))
    expected = torch.tensor([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(m, expected, atol=1e-6)
    # latents are flattened: (B, C, H, W) compares whole images
    z = torch.randn(3, 4, 2, 2)
    assert torch.allclose(losses.cosine_matrix(z), losses.cosine_matrix(z.reshape(3, -1)))


def test_corr_loss_known_answers():
    t = torch.stack([e1, e2, e3])  # M^T = I
    # identical latents: M^Z all ones, six off-diagonal entries differ by 1
    assert losses.corr_loss(t, torch.stack([e1, e1, e1])).item() == pytest.approx(6 / 9)
    # latents that repeat the text geometry: no loss
    assert losses.corr_loss(t, 3 * t).item() == pytest.approx(0.0, abs=1e-7)
    # z1 = z2, z3 orthogonal: only (0, 1) and (1, 0) differ
    assert losses.corr_loss(t, torch.stack([e1, e1, e2])).item() == pytest.approx(2 / 9)
    # opposite latents: cos = −1 where the text says 0, i.e. (−1 − 0)² on two entries
    assert losses.corr_loss(t, torch.stack([e1, -e1, e2])).item() == pytest.approx(2 / 9)


def test_cate_loss_known_answer():
    t = torch.stack([e1, e1, e1])
    c = torch.stack([e1, e2, e1])  # s = (1, 0, 1); M^C = [[1,0,1],[0,1,0],[1,0,1]]
    z = torch.stack([e1, e1, e1])  # M^Z all ones → (M^Z − M^C)² is 1 at (0,1), (1,0), (1,2), (2,1)
    s = losses.caption_category_similarity(t, c)
    assert torch.allclose(s, torch.tensor([1.0, 0.0, 1.0]))
    w = losses.pair_weights(s, mu=1.0, sigma=1.0)  # sigmoid(s_i + s_j − 1)
    assert w[0, 0].item() == pytest.approx(sig(1)) and w[1, 1].item() == pytest.approx(sig(-1))
    assert w[0, 1].item() == pytest.approx(0.5)
    assert losses.cate_loss(t, z, c, mu=1.0, sigma=1.0).item() == pytest.approx(4 * 0.5 / 9)
    # another μ, σ moves only the weights: W_01 = sigmoid((1 − 0) / 2)
    assert losses.cate_loss(t, z, c, mu=0.0, sigma=2.0).item() == pytest.approx(4 * sig(0.5) / 9)


def test_weight_stats_equal_brute_force_over_all_pairs():
    s = np.array([1.0, 0.0, 1.0])
    mu, sigma = losses.pair_weight_stats(s)
    assert (mu, sigma) == pytest.approx((4 / 3, 2 / 3))  # A = s_i + s_j over the 9 ordered pairs
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 50)
    a = s[:, None] + s[None, :]
    assert losses.pair_weight_stats(s) == pytest.approx((a.mean(), a.std()))
    assert losses.pair_weight_stats([0.3, 0.3])[1] == pytest.approx(1e-6)  # σ floored, no division by 0
    with pytest.raises(ValueError, match="No caption/category pairs"):
        losses.pair_weight_stats([])


def test_losses_give_gradients_to_the_latents():
    z = torch.randn(3, 4, 2, 2, requires_grad=True)
    t, c = torch.randn(3, 8), torch.randn(3, 8)
    (losses.corr_loss(t, z) + losses.cate_loss(t, z, c, 0.0, 1.0)).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_predicted_clean_latents_invert_the_forward_noising():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    noisy = sched.add_noise(x0, eps, t)
    assert torch.allclose(losses.predicted_clean_latents(noisy, eps, sched.alphas_cumprod, t), x0, atol=1e-3)


def test_min_snr_weights():
    alphas = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99
    w = losses.min_snr_weights(alphas, torch.tensor([0, 1, 2]), gamma=5.0)
    assert torch.allclose(w, torch.tensor([5 / 99, 1.0, 1.0]), atol=1e-6)
    pred, target = torch.zeros(3, 2), torch.ones(3, 2)
    assert losses.diffusion_loss(pred, target).item() == pytest.approx(1.0)
    assert losses.diffusion_loss(pred, target, w).item() == pytest.approx((5 / 99 + 2) / 3)
