"""The generation driver: generation boundaries, fresh optimizer and LR,
history, crash / SIGKILL + resume bit-identical to an uninterrupted run, resume checks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import toy_data
from efficientdl.core import load_checkpoint
from efficientdl.knowledge_evolution import (
    KEConfig,
    KnowledgeEvolution,
    accuracy_fn,
    evolve,
    init_weights,
    recipe_train_fn,
    split,
)
from efficientdl.knowledge_evolution import training as recipe_module
from efficientdl.models import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

TIMINGS = ("reinit_seconds", "train_seconds")


def setup(generations=3, **overrides):
    """Model, masks and driver options of the toy KE run (deterministic)."""
    torch.manual_seed(0)
    model = small_cnn(4, width=8)
    init_weights(model, generator=torch.Generator().manual_seed(0))
    cfg = KEConfig(epochs=2, batch_size=8, lr=0.1, progress=False, checkpoint_seconds=0.0)
    train, test = toy_data(10, 0), toy_data(5, 1)
    options = dict(
        train_fn=recipe_train_fn(cfg, train, device="cpu"),
        eval_fn=accuracy_fn(test, device="cpu"),
        generations=generations,
        probe=test.images[:8],
        seed=0,
    )
    options.update(overrides)
    return model, split(model, rate=0.5), options


def strip(history):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in history]


def same_state(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):  # noqa: F811 (the fixture, not the import)
    run_dir = tmp_path_factory.mktemp("ref")
    model, masks, options = setup()
    history = evolve(model, masks, run_dir=run_dir, **options)
    return run_dir, model.state_dict(), history


def test_generation_boundaries_and_history(reference):
    run_dir, _, history = reference
    _, masks, _ = setup()
    assert [r["generation"] for r in history] == [1, 2, 3]
    assert len({r["seed"] for r in history}) == 3
    for r in history:
        assert {"dense", "fit", "reset"} <= set(r) and 0 <= r["fit"]["accuracy"] <= 1
        assert r["params"]["dense"] > r["params"]["fit"] > 0
        assert set(r["weight_abs_mean"]) == {"fit", "reset"} and "reset_effect" in r
        assert r["train"]["epochs"] == 2
    start1 = load_checkpoint(run_dir / "gen_01" / "start.pt")["model"]
    assert same_state(start1, setup()[0].state_dict())  # generation 1 starts untouched
    for g in (2, 3):
        prev = load_checkpoint(run_dir / f"gen_{g - 1:02d}" / "final.pt")["model"]
        last_epoch = load_checkpoint(run_dir / f"gen_{g - 1:02d}" / "train.pt")["model"]
        assert same_state(prev, last_epoch)  # final = last-epoch weights
        start = load_checkpoint(run_dir / f"gen_{g:02d}" / "start.pt")["model"]
        for key, m in masks.items():
            assert torch.equal(start[key][m], prev[key][m]), key  # fit kept bit-exactly
            assert not torch.equal(start[key][~m], prev[key][~m]), key  # reset re-drawn
        for key in prev:
            if key not in masks:
                assert torch.equal(start[key], prev[key]), key  # BN, fc bias carried over
    s2 = load_checkpoint(run_dir / "gen_02" / "start.pt")["model"]
    s3 = load_checkpoint(run_dir / "gen_03" / "start.pt")["model"]
    m = masks["stage2.0.weight"]
    assert not torch.equal(s2["stage2.0.weight"][~m], s3["stage2.0.weight"][~m])  # new draws
    lrs = [r["lr"] for r in json.loads((run_dir / "gen_02" / "metrics.json").read_text())]
    assert lrs == pytest.approx([0.1 / 5, 0.1 * 2 / 5])  # warm-up restarted: η/5 at epoch 0
    files = {p.name for p in run_dir.iterdir()}
    assert {"ke.json", "masks.pt", "history.json", "history.csv", "generations.png"} <= files
    assert json.loads((run_dir / "history.json").read_text()) == history


def test_fresh_optimizer_every_generation(monkeypatch):
    made = []

    def recording(model, cfg):
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        made.append((opt, len(opt.state)))
        return opt

    monkeypatch.setattr(recipe_module, "make_optimizer", recording)
    model, masks, options = setup()
    KnowledgeEvolution(model, masks, **options).run()  # in memory (run_dir=None)
    assert len(made) == 3 and len({id(o) for o, _ in made}) == 3
    assert all(state_len == 0 for _, state_len in made)


def test_crash_mid_generation_then_resume_is_bit_identical(reference, tmp_path, monkeypatch):
    _, ref_state, ref_history = reference
    calls = {"n": 0}
    real_save = recipe_module.save_checkpoint

    def crashing(path, state):
        calls["n"] += 1
        if calls["n"] == 4:  # gen 1: epochs 1, 2; gen 2: epoch 1 saved, crash before epoch 2's
            raise RuntimeError("injected crash")
        return real_save(path, state)

    monkeypatch.setattr(recipe_module, "save_checkpoint", crashing)
    model, masks, options = setup()
    with pytest.raises(RuntimeError, match="injected crash"):
        evolve(model, masks, run_dir=tmp_path, **options)
    monkeypatch.setattr(recipe_module, "save_checkpoint", real_save)
    assert not (tmp_path / "gen_02" / "final.pt").exists()
    fresh, masks, options = setup()
    torch.nn.init.zeros_(fresh.fc.weight)  # the resume must restore every weight itself
    history = evolve(fresh, masks, run_dir=tmp_path, **options)
    assert same_state(fresh.state_dict(), ref_state)
    assert strip(history) == strip(ref_history)


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads({threads})  # results depend on the thread count
sys.path.insert(0, {tests!r})
from test_ke_driver import setup
from efficientdl.knowledge_evolution import evolve
model, masks, options = setup()
inner = options["train_fn"]
def train_fn(model, ctx):
    if ctx.index == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(model, ctx)
options["train_fn"] = train_fn
evolve(model, masks, run_dir={run_dir!r}, **options)
"""


def test_sigkill_between_generations_then_resume(reference, tmp_path):
    _, ref_state, ref_history = reference
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), run_dir=str(tmp_path), threads=torch.get_num_threads()
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "gen_02" / "final.pt").exists()
    assert (tmp_path / "gen_03" / "start.pt").exists()
    assert not (tmp_path / "gen_03" / "final.pt").exists()
    model, masks, options = setup()
    history = evolve(model, masks, run_dir=tmp_path, **options)
    assert same_state(model.state_dict(), ref_state)
    assert strip(history) == strip(ref_history)


def test_extend_generations_and_keep(reference, tmp_path):
    _, ref_state, ref_history = reference
    model, masks, options = setup(generations=2, keep=1)
    evolve(model, masks, run_dir=tmp_path, **options)
    model, masks, options = setup(generations=3, keep=1)
    history = evolve(model, masks, run_dir=tmp_path, **options)  # raising G extends the run
    assert same_state(model.state_dict(), ref_state) and strip(history) == strip(ref_history)
    assert sorted(p.name for p in tmp_path.glob("gen_*")) == ["gen_01", "gen_03"]


def test_resume_checks_config_and_masks(reference):
    run_dir = reference[0]
    model, masks, options = setup(init="zero")
    with pytest.raises(ValueError, match="cannot resume .*'init' was 'default', now 'zero'"):
        evolve(model, masks, run_dir=run_dir, **options)
    model, masks, options = setup()
    other = split(model, rate=0.3)
    with pytest.raises(ValueError, match="'masks_sha256' was"):
        evolve(model, other, run_dir=run_dir, **options)


def test_driver_options_and_errors():
    model, masks, options = setup(generations=2)
    with pytest.raises(ValueError, match="reset_hypothesis=True re-draws WELS masks"):
        KnowledgeEvolution(model, masks, reset_hypothesis=True, **options)
    wels = split(model, rate=0.5, scheme="wels", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="reset_bn=True needs kernel-level"):
        KnowledgeEvolution(model, wels, reset_bn=True, **options)
    with pytest.raises(ValueError, match="generations must be a positive int, got 0"):
        KnowledgeEvolution(model, masks, **{**options, "generations": 0})
    seen = []
    inner = options["train_fn"]
    options["train_fn"] = lambda m, ctx: (seen.append(dict(ctx.masks)), inner(m, ctx))[1]
    history = evolve(model, wels, reset_hypothesis=True, **options)
    first, second = seen
    assert any(not torch.equal(first[k], second[k]) for k in first)  # masks re-drawn
    assert all(int(first[k].sum()) == int(second[k].sum()) for k in first)
    assert history[-1]["params"]["fit"] < history[-1]["params"]["dense"]
