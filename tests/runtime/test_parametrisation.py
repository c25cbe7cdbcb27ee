"""The network's parametrisation (runtime/sampling/parametrisation.py, docs/model.md section 2.2):
hand-worked numbers, exact round trips in float64, the high-noise error that v removes, the same
functions on torch tensors, and the model config that names the prediction."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.parametrisation import PREDICTIONS, to_x0_eps, training_target


def test_hand_worked_numbers():
    # alpha = 0.6, sigma = 0.8 (0.36 + 0.64 = 1); x0 = 2, eps = -1 -> x = 1.2 - 0.8 = 0.4.
    a, s, x0, eps, x = 0.6, 0.8, 2.0, -1.0, 0.4
    v = a * eps - s * x0  # -0.6 - 1.6 = -2.2
    assert training_target(x0, eps, a, s, "epsilon") == eps
    assert training_target(x0, eps, a, s, "v") == pytest.approx(-2.2, abs=1e-15)
    # epsilon: x0 = (0.4 - 0.8 * -1) / 0.6 = 2; v: x0 = 0.6 * 0.4 - 0.8 * -2.2 = 0.24 + 1.76 = 2,
    # eps = 0.8 * 0.4 + 0.6 * -2.2 = 0.32 - 1.32 = -1.
    got = to_x0_eps(-1.0, x, a, s, "epsilon")
    assert got[0] == pytest.approx(2.0, abs=1e-15) and got[1] == -1.0
    got = to_x0_eps(-2.2, x, a, s, "v")
    assert got[0] == pytest.approx(2.0, abs=1e-15) and got[1] == pytest.approx(-1.0, abs=1e-15)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_round_trip_recovers_x0_and_eps_in_float64(prediction):
    """x = alpha x0 + sigma eps -> target -> to_x0_eps gives back x0 and eps, over the whole
    schedule's range of noise levels (alpha from ~0.006 to ~1)."""
    from dil.runtime.sampling.schedule import NoiseSchedule

    rng = np.random.default_rng(0)
    sch = NoiseSchedule()
    kappa = np.linspace(0.0, sch.num_steps - 1, 41)[:, None]
    alpha, sigma = sch.alpha(kappa), sch.sigma(kappa)
    x0, eps = rng.standard_normal((41, 64)), rng.standard_normal((41, 64))
    x = alpha * x0 + sigma * eps
    target = training_target(x0, eps, alpha, sigma, prediction)
    x0_back, eps_back = to_x0_eps(target, x, alpha, sigma, prediction)
    assert np.abs(x0_back - x0).max() <= 1e-12  # epsilon: ~3e-14 (it divides by alpha = 0.0064 at the top)
    assert np.abs(eps_back - eps).max() <= 1e-12


def _x0_error(prediction: str, error: float = 0.05) -> float:
    """|x0_hat - x0| when the network's output is off by `error` at the first step's noise level
    of the shipped schedule (alpha = 0.0064)."""
    alpha = 0.0064
    sigma = np.sqrt(1.0 - alpha**2)
    x0, eps = 1.3, -0.7
    x = alpha * x0 + sigma * eps
    out = training_target(x0, eps, alpha, sigma, prediction) + error
    return abs(to_x0_eps(out, x, alpha, sigma, prediction)[0] - x0)


def test_high_noise_output_error_guard():
    """The issue's guard: at alpha = 0.0064 an output error of 0.05 puts an epsilon model's x0
    more than 5 standard deviations off (0.05 * sigma / alpha = 7.8), a v model's below 0.1
    (0.05 * sigma). Fails with the epsilon conversion in the v branch."""
    assert _x0_error("epsilon") > 5.0
    assert _x0_error("epsilon") == pytest.approx(0.05 * np.sqrt(1 - 0.0064**2) / 0.0064, rel=1e-9)
    assert _x0_error("v") < 0.1
    assert _x0_error("v") == pytest.approx(0.05 * np.sqrt(1 - 0.0064**2), rel=1e-9)


def test_same_functions_on_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    out, x = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    alpha, sigma = 0.3, np.sqrt(1 - 0.09)
    for prediction in PREDICTIONS:
        want = to_x0_eps(out, x, alpha, sigma, prediction)
        got = to_x0_eps(torch.from_numpy(out), torch.from_numpy(x), torch.tensor(alpha, dtype=torch.float64),
                        torch.tensor(sigma, dtype=torch.float64), prediction)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g.numpy(), w)
        t = training_target(torch.from_numpy(x), torch.from_numpy(out), alpha, sigma, prediction)
        np.testing.assert_array_equal(t.numpy(), training_target(x, out, alpha, sigma, prediction))


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction must be one of epsilon, v, got 'x0'"):
        to_x0_eps(1.0, 1.0, 0.6, 0.8, "x0")
    with pytest.raises(ValueError, match="prediction must be one of"):
        training_target(1.0, 1.0, 0.6, 0.8, "sample")


# -- the model config ---------------------------------------------------------------------------
def test_model_config_prediction_and_context_patch():
    assert ModelConfig().prediction == "epsilon" and ModelConfig().context_patch == 1
    cfg = ModelConfig(prediction="v", context_patch=24, context_length=336)
    assert cfg.context_tokens == 14 and ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="^prediction must be one of epsilon, v, got 'x0'$"):
        ModelConfig(prediction="x0")
    for bad in (0, 5, -24):  # 168 % 5 != 0
        with pytest.raises(ValueError, match="^context_patch must be an integer >= 1 that divides context_length"):
            ModelConfig(context_patch=bad)


def test_old_manifest_model_section_loads_with_the_defaults():
    """A model section written before prediction and context_patch existed (or with prediction
    only): an epsilon model with one step per context token."""
    old = {"context_length": 168, "horizon": 24, "d_model": 64, "num_heads": 4, "num_layers": 3, "ffn_dim": 128,
           "time_embed_dim": 32, "context_features": 2, "horizon_features": 1}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.prediction, cfg.context_patch) == ("epsilon", 1)
    assert ModelConfig.from_dict({**old, "prediction": "epsilon"}) == cfg
