"""Distributed optimizers (lmo.optimizers.distributed): 2 and 3 CPU processes with gloo equal one process.

The scenarios live in ``tests/_dist_scenarios.py``; each world size is launched once (torch.multiprocessing,
``file://`` rendezvous, ``OMP_NUM_THREADS=1``) and runs all of them; each test below reads one scenario's outcome.
The single-process tests at the end check the pure pieces (balance, shard layout, locality decisions, the kit's
check of ``separable_axes``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _dist_scenarios  # noqa: E402

import lmo  # noqa: E402
import lmo.optimizers as lo  # noqa: E402
from lmo.optimizers.distributed import Distribution, _local_geometry, balance, chunk_sizes  # noqa: E402
from lmo.testing import ContractViolation, check_norm  # noqa: E402

SCENARIOS = list(_dist_scenarios.SCENARIOS)


def _launch(world: int, tmp: str) -> dict[int, dict[str, str]]:
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init = os.path.join(tmp, "rendezvous")
    mp.spawn(_dist_scenarios.run, args=(world, init, tmp), nprocs=world, join=True)
    results = {}
    for rank in range(world):
        with open(os.path.join(tmp, f"{rank}.json")) as f:
            results[rank] = json.load(f)
    return results


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def outcomes(request, tmp_path_factory):
    world = request.param
    return world, _launch(world, str(tmp_path_factory.mktemp(f"world{world}")))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_distributed_equals_single_process(outcomes, scenario):
    world, results = outcomes
    assert len(results) == world
    for rank, res in results.items():
        assert res[scenario] == "ok", f"world {world}, rank {rank}, {scenario}:\n{res[scenario]}"


# ---------------------------------------------------------------------------------------------------------------
# the pure pieces, one process
# ---------------------------------------------------------------------------------------------------------------
def test_balance_is_deterministic_and_bounded():
    costs = [3456, 768, 512, 512, 288]
    owners = balance(costs, 3)
    assert owners == balance(costs, 3)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(3)]
    assert max(loads) <= sum(costs) / 3 + max(costs)
    assert sorted(set(owners)) == [0, 1, 2]
    assert balance([1.0] * 5, 2) == [0, 1, 0, 1, 0]  # equal costs: round robin, remainder to the first ranks
    assert balance([], 4) == []


@pytest.mark.parametrize("n", [0, 1, 2, 4, 5, 7, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_chunk_sizes_follow_torch_chunk(n, world):
    chunks = torch.arange(n).chunk(world) if n else ()
    expected = [len(c) for c in chunks] + [0] * (world - len(chunks))
    assert list(chunk_sizes(n, world)) == expected


def test_local_geometry_decisions():
    spectral, rms, sign = lmo.get_norm("spectral"), lmo.get_norm("rms"), lmo.get_norm("scion_sign")
    emb = lmo.get_norm("colnorm", rms=True, transpose=True)
    g = lo.ParamGeometry
    # a matrix norm sharded along its rows needs the whole matrix
    assert _local_geometry(g(spectral), (8, 6), 0, 3, "lmo") is None
    # rows of a row-wise vector norm, a batch of matrices, separable norms: local
    assert _local_geometry(g(rms), (8, 6), 0, 3, "lmo") is not None
    assert _local_geometry(g(spectral), (4, 8, 6), 0, 2, "sharp") is not None
    assert _local_geometry(g(sign), (5, 12), 0, 2, "lmo") is not None
    assert _local_geometry(g(sign), (5, 12), 0, 2, "sharp") is None  # the dual norm sums over the whole matrix
    assert _local_geometry(g(emb), (10, 6), 0, 4, "lmo") is not None
    assert _local_geometry(g(lmo.get_norm("colnorm", rms=True)), (10, 6), 0, 4, "lmo") is None
    # a conv kernel viewed as (O, I*k*k): the rows survive the view and get the shard's size
    local = _local_geometry(g(rms, view=(8, 27)), (8, 3, 3, 3), 0, 3, "lmo")
    assert local is not None and local.view == (3, 27)
    # transpose moves the sharded axis into the vector norm's core
    assert _local_geometry(g(rms, transpose=True), (8, 6), 0, 3, "lmo") is None
    # a view that merges the sharded axis with another cannot be evaluated on the shard
    assert _local_geometry(g(rms, view=(48,)), (8, 6), 0, 3, "lmo") is None


def test_separable_declarations_hold_and_a_false_one_is_caught():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    for name, kw in [("sign", {"ndim": 2}), ("colnorm", {}), ("colnorm", {"rms": True, "transpose": True}),
                     ("rownorm", {"normalized": True}), ("scion_sign", {}), ("scion_sign", {"normalized": False})]:
        norm = lmo.get_norm(name, **kw)
        assert norm.separable_axes, (name, kw)
        check_norm(norm, x)

    class Lying(type(lmo.get_norm("frobenius"))):
        separable_axes = (-1,)  # false: the Frobenius oracle normalises by the whole matrix

    with pytest.raises(ContractViolation, match="separable"):
        check_norm(Lying(), x)


def test_no_process_group_is_one_process():
    d = Distribution(None)
    w = torch.zeros(3, 3)
    assert d.world == 1 and not d.active([w]) and d.executor([w]) is None
    with pytest.raises(ValueError, match="process_group"):
        lo.Muon([torch.nn.Parameter(w)], process_group="world")


def test_torchrun_example_trains_and_checkpoints(tmp_path):
    """examples/distributed_muon.py under torchrun, 2 CPU processes, FSDP2, with a torch.distributed.checkpoint."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "distributed_muon.py"
    ckpt = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(example),
         "--mode", "fsdp2", "--steps", "4", "--dim", "16", "--layers", "2", "--checkpoint", str(ckpt)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 4 and all(np.isfinite(losses)), done.stdout
    assert f"saved {ckpt}" in done.stdout and any(ckpt.iterdir())


def test_torchrun_example_private_mode():
    """examples/distributed_muon.py --mode private: DP-Scion on 2 CPU processes; the private loss falls."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "distributed_muon.py"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(example),
         "--mode", "private", "--steps", "40", "--dim", "32", "--vocab", "8", "--layers", "1", "--noise", "0.5",
         "--batch", "256"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "noise std per entry" in done.stdout
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) >= 3 and all(np.isfinite(losses)), done.stdout
    assert losses[-1] < losses[0] - 0.3, done.stdout  # ln 8 = 2.08 at the start
