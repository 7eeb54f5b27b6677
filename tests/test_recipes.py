"""Scion's recipe for any model: roles found from the parameter list (no names needed), names as overrides, the
binding to a whole parameter list (functional and torch, param groups included), Scion's initialisation, and a short
training run of the digits CNN (benchmarks/defaults.py measures the accuracies)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lmo
import lmo.optimizers as lo

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.skipif("spectral" not in lmo.norms(), reason="needs the spectral geometry")


def digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 64, 64), nn.ReLU(), nn.Linear(64, 10))


def tiny_gpt() -> nn.Module:
    from lmo.optimizers import demo

    torch.manual_seed(0)
    return demo.TinyGPT(50, demo.Config(layers=1, width=16, heads=2, context=8))


def roles(recipe: lo.ScionRecipe, model: nn.Module) -> dict[str, str]:
    return dict(recipe.assign(model.named_parameters()).roles)


def test_roles_of_a_sequential_cnn_come_from_shapes_and_order():
    assert roles(lo.ScionRecipe(), digits_cnn()) == {
        "0.weight": "conv", "0.bias": "vector", "2.weight": "conv", "2.bias": "vector",
        "5.weight": "hidden", "5.bias": "vector", "7.weight": "output", "7.bias": "vector",
    }


def test_roles_of_a_gpt_find_the_token_table_and_the_head():
    r = roles(lo.ScionRecipe(), tiny_gpt())
    assert r["wte.weight"] == "embedding"  # (vocab, width), read by rows: the next matrix takes width inputs
    assert r["lm_head.weight"] == "output"  # the last matrix
    assert r["wpe.weight"] == "hidden"  # (context, width) square here: not told apart from a linear layer
    assert {r[n] for n in r if n.startswith("blocks.") and n.endswith("weight") and "ln" not in n} == {"hidden"}
    assert {r[n] for n in r if ".ln" in n or n.startswith("ln_f")} == {"vector"}
    declared = roles(lo.ScionRecipe(embedding=("wte", "wpe")), tiny_gpt())
    assert declared["wte.weight"] == declared["wpe.weight"] == "embedding"


def test_an_mlp_input_layer_is_not_a_table_and_names_override_the_structure():
    mlp = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
    assert roles(lo.ScionRecipe(), mlp) == {"0.weight": "hidden", "0.bias": "vector", "2.weight": "hidden",
                                            "2.bias": "vector", "4.weight": "output", "4.bias": "vector"}
    r = roles(lo.ScionRecipe(output="2", embedding="0.weight"), mlp)
    assert (r["0.weight"], r["2.weight"], r["4.weight"]) == ("embedding", "output", "hidden")
    assert roles(lo.ScionRecipe(output="*.weight"), mlp)["0.weight"] == "output"  # a glob pattern
    with pytest.raises(ValueError, match="'head' matches no parameter"):
        lo.ScionRecipe(output="head").assign(mlp.named_parameters())
    with pytest.raises(ValueError, match="output"):
        lo.ScionRecipe(output=3)


def test_geometries_and_radii_of_the_roles():
    recipe = lo.ScionRecipe(radius=8.0, output_radius=128.0, embedding_radius=2.0, bias_radius=0.5)
    rule = recipe.assign(tiny_gpt().named_parameters())
    head, table = rule("lm_head.weight", (50, 16)), rule("wte.weight", (50, 16))
    hidden, gain = rule("blocks.0.fc.weight", (64, 16)), rule("ln_f.weight", (16,))
    assert (head.norm.name, head.radius) == ("scion_sign", 128.0)
    assert (table.norm.name, table.norm.transpose, table.radius) == ("colnorm", True, 2.0)
    assert (hidden.norm.name, hidden.radius) == ("spectral", 8.0)
    assert (gain.norm.name, gain.radius) == ("bias_rms", 0.5)
    kernel = recipe.assign(digits_cnn().named_parameters())("2.weight", (32, 16, 3, 3))
    assert (kernel.norm.name, kernel.radius) == ("spectral_conv", 8.0)
    assert re.search(r"lm_head.weight +output +Sign +128\n", str(rule) + "\n"), str(rule)


def test_the_functional_driver_binds_the_recipe_to_its_parameter_tree():
    # numpy: the last matrix is the output layer (Sign: every entry moves by lr * rho / d_in from zero)
    rng = np.random.default_rng(0)
    params = {"hidden.weight": np.zeros((8, 4)), "hidden.bias": np.zeros(8), "fc.weight": np.zeros((3, 8))}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    driver = lo.uscion(0.01, geometry=lo.ScionRecipe(radius=2.0, output_radius=40.0))
    new, _ = driver.step(params, grads, driver.init(params))
    np.testing.assert_allclose(new["fc.weight"], -0.01 * 40.0 / 8 * np.sign(grads["fc.weight"]), rtol=1e-12)
    s = np.linalg.svd(new["hidden.weight"], compute_uv=False)
    assert s.max() == pytest.approx(0.01 * 2.0 * math.sqrt(8 / 4), rel=0.35)  # Newton-Schulz: ~ U V^T


def _steps_of(opt, model, x, y):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    opt.zero_grad()
    return before, grads, {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("groups", [False, True])
def test_torch_optimizers_bind_the_recipe_to_all_their_parameters(groups):
    model = digits_cnn()
    named = list(model.named_parameters())
    recipe = lo.ScionRecipe(radius=2.0, output_radius=64.0)
    if groups:  # the head in a group of its own: the recipe still sees the whole model
        body, head = named[:-2], named[-2:]
        params = [{"params": [p for _, p in body], "param_names": [n for n, _ in body]},
                  {"params": [p for _, p in head], "param_names": [n for n, _ in head], "lr": 0.02}]
    else:
        params = named
    opt = lo.LMOOptimizer(params, lo.uscion(0.01, geometry=recipe))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before, grads, after = _steps_of(opt, model, x, y)
    lr = 0.02 if groups else 0.01
    step = after["7.weight"] - before["7.weight"]  # the Sign oracle of the output layer: -lr rho sign(g) / d_in
    torch.testing.assert_close(step, -lr * 64.0 / 64 * torch.sign(grads["7.weight"]))
    hidden = after["5.weight"] - before["5.weight"]  # Spectral: not a sign step
    assert not torch.allclose(hidden.abs(), hidden.abs().max().expand_as(hidden))


def test_a_frozen_head_does_not_move_the_output_role():
    # the head has no gradient in a step: the plan of the parameters that have one keeps the roles of the model
    model = digits_cnn()
    opt = lo.LMOOptimizer(model.named_parameters(), lo.uscion(0.01, geometry=lo.ScionRecipe(radius=2.0)))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model[7].weight.grad = None
    model[7].bias.grad = None
    before = model[5].weight.detach().clone()
    opt.step()
    step = model[5].weight.detach() - before
    assert torch.linalg.matrix_rank(step) > 1 and not torch.allclose(step.abs(), step.abs().max().expand_as(step))


def test_scion_init_puts_each_parameter_on_the_sphere_of_its_ball():
    model = digits_cnn()
    recipe = lo.ScionRecipe(radius=8.0, output_radius=128.0)
    bias = model[0].bias.detach().clone()
    init = lo.scion_init(model.named_parameters(), recipe, seed=3)
    assert model.load_state_dict(init, strict=False).missing_keys == []
    hidden = torch.linalg.svdvals(model[5].weight.detach().double())
    torch.testing.assert_close(hidden, torch.full_like(hidden, 8.0 * math.sqrt(64 / 2048)), rtol=1e-5, atol=0)
    tap = torch.linalg.svdvals(model[2].weight.detach().double()[:, :, 1, 2])
    torch.testing.assert_close(tap, torch.full_like(tap, 8.0 * math.sqrt(32 / 16) / 9), rtol=1e-5, atol=0)
    assert torch.equal(model[7].weight.detach().abs(), torch.full((10, 64), 128.0 / 64))
    assert torch.equal(model[0].bias.detach(), bias)  # vectors kept (vectors="zeros": the reference's zeros)
    # inside the constrained ball: Scion's own norm of each matrix is its radius
    rule = recipe.assign(model.named_parameters())
    for name in ("5.weight", "7.weight"):
        geo, x = rule(name, (0, 0)), dict(model.named_parameters())[name].detach().double()
        assert float(geo.norm.norm(x)) == pytest.approx(geo.radius, rel=1e-6)
    again = lo.scion_init(model.named_parameters(), recipe, seed=3)
    assert torch.equal(again["5.weight"], init["5.weight"])  # seeded
    zeros = lo.scion_init({"b": np.ones(3), "e": np.ones((7, 4))}, lo.ScionRecipe(embedding="e"), vectors="zeros")
    assert np.all(zeros["b"] == 0) and np.allclose(np.sqrt(np.mean(zeros["e"] ** 2, axis=-1)), 1.0)


def test_default_scion_and_uscion_train_the_digits_cnn_briefly():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:512] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y[:512])
    for factory in (lo.scion, lo.uscion):
        model = digits_cnn()
        opt = lo.LMOOptimizer(model.named_parameters(), factory())
        with torch.no_grad():
            start = float(torch.nn.functional.cross_entropy(model(x), y))
        for step in range(24):
            idx = slice(64 * (step % 8), 64 * (step % 8 + 1))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            end = float(torch.nn.functional.cross_entropy(model(x), y))
            accuracy = float((model(x).argmax(1) == y).float().mean())
        assert end < start - 0.3 and accuracy > 0.8, (factory.__name__, start, end, accuracy)
