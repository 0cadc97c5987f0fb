"""AdaShare ablations (w/o L_sp, w/o L_sh, w/o curriculum, REINFORCE), the policy picture and every
`efficientdl adashare` CLI action on a tiny procedural config."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from adashare_support import TINY
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model.policy import Policy
from efficientdl.adashare.phases import AdaShareRun, search
from efficientdl.adashare.reporting.viz import plot_policy
from efficientdl.cli import main
from efficientdl.core.config import apply_overrides, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(*overrides):
    return from_dict(AdaShareConfig, apply_overrides(TINY, list(overrides)))


def _spy(monkeypatch, name):
    calls = []
    real = getattr(search, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(search, name, wrapper)
    return calls


@pytest.mark.parametrize("name", ["no_sparsity", "no_sharing", "no_curriculum"])
def test_regulariser_and_curriculum_ablations(tmp_path, monkeypatch, name):
    sparsity, sharing = _spy(monkeypatch, "sparsity_loss"), _spy(monkeypatch, "sharing_loss")
    tr = AdaShareRun(tiny(), run_dir=tmp_path)
    result = tr.run_baseline(name)
    assert set(result["test"]) == {"seg", "depth"} and "policy" in result
    child = tmp_path / "baselines" / name
    history = json.loads((child / "logits_history.json").read_text())
    n = [h["n_unlocked"] for h in history]
    child_cfg = json.loads((child / "config.json").read_text())["config"]
    if name == "no_sparsity":
        assert not sparsity and sharing and child_cfg["train"]["sparsity_weight"] == 0
    if name == "no_sharing":  # the official code then weights the sparsity loss by depth
        assert not sharing and sparsity and all(c["depth_weighted"] for c in sparsity)
    if name != "no_sharing":
        assert not any(c["depth_weighted"] for c in sparsity)
    assert n == ([8] * len(n) if name == "no_curriculum" else [1, 2, 3, 4][: len(n)])
    assert tr.run_baseline(name) == result  # finished: read back, not re-run


def test_reinforce_log_probability_and_policy_step(tmp_path):
    tr = AdaShareRun(
        tiny("train.search_method=reinforce", "train.sparsity_weight=0", "train.sharing_weight=0"),
        run_dir=tmp_path,
    )
    model = tr.build_model()
    with torch.no_grad():
        model.policy_logits.normal_()
    policy, logp = search.bernoulli_policy(model, 3, torch.Generator().manual_seed(0))
    alpha = model.execution_probs().double().numpy()
    by_hand = sum(
        np.log(alpha[k, l] if policy.execute[k, l] else 1 - alpha[k, l])
        for k in range(2)
        for l in range(5, 8)
    )
    assert float(logp.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    assert policy.execute[:, :5].all()  # curriculum padding
    # one policy iteration: only the logits move, by (loss − baseline)·∇log p
    state = search.Search(tr.context, model, tmp_path / "s", reference=None)
    state.state["reinforce_baseline"] = 0.0  # a baseline below the loss: push the sample away
    before = {k: v.clone() for k, v in model.named_parameters()}
    gen_policy, _ = search.bernoulli_policy(
        model, state.n, search.gate_generator(tr.cfg.seed, state.state["it"])
    )
    state._step("policy")
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]) == (k != "policy_logits"), k
    moved = (model.policy_logits - before["policy_logits"])[..., 0]
    unlocked = moved[:, -state.n :]
    executed = gen_policy.execute[:, -state.n :]
    assert (unlocked[executed] < 0).all() and (unlocked[~executed] > 0).all()
    assert state.state["reinforce_baseline"] > 0


def test_reinforce_search_runs_end_to_end(tmp_path):
    result = AdaShareRun(tiny(), run_dir=tmp_path).run_baseline("reinforce")
    cfg = json.loads((tmp_path / "baselines" / "reinforce" / "config.json").read_text())["config"]
    assert cfg["train"]["search_method"] == "reinforce" and set(result["test"]) == {"seg", "depth"}


def test_plot_policy_pictures(tmp_path):
    execute = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    path = plot_policy(Policy(("seg", "depth"), execute), tmp_path / "p.png", title="t")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    coloured = (np.abs(image - image.mean(-1, keepdims=True)) > 40).any(-1)
    assert coloured.sum() > 100  # executed cells are filled with the task colours
    probs = plot_policy(torch.rand(2, 8), tmp_path / "q.png", tasks=("seg", "depth"))
    assert probs.is_file()
    with pytest.raises(ValueError, match="\\[K, L\\]"):
        plot_policy(torch.rand(2, 8, 2), tmp_path / "r.png")
    with pytest.raises(ValueError, match="1 task names for 2 rows"):
        plot_policy(torch.rand(2, 8), tmp_path / "r.png", tasks=("seg",))


def test_every_cli_action(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = ["--run-dir", str(tmp_path / "run")]
    base = ["adashare", "{}", "--config", str(config), *run]

    def cli(action, *extra):
        args = [a.format(action) for a in base] + list(extra)
        assert main(args) == 0
        return capsys.readouterr().out

    cli("warmup")
    assert (tmp_path / "run" / "warmup" / "result.json").is_file()
    cli("search", "--resume")  # the next phases continue the run in the same folder
    assert json.loads((tmp_path / "run" / "search" / "done.json").read_text())["iters"] == 14
    cli("sample", "--resume")
    assert (tmp_path / "run" / "policies" / "policy_00.json").is_file()
    cli("retrain", "--sample", "0", "--resume")
    assert (tmp_path / "run" / "retrain" / "sample_00" / "best.pt").is_file()
    cli("select", "--resume")
    selected = json.loads((tmp_path / "run" / "adashare_result.json").read_text())
    out = cli("evaluate", "--split", "test")
    assert json.loads(out[out.index("{") :]) == selected["test"]
    cli("baseline", "--name", "multi_task", "--resume")
    assert (tmp_path / "run" / "baselines" / "multi_task" / "result.json").is_file()
    assert main(["adashare", "visualize", *run]) == 0
    assert (tmp_path / "run" / "policies" / "policy_00.png").is_file()
    # the saved config continues a run without --config; pipeline finishes it with the tables
    assert main(["adashare", "pipeline", *run, "--resume", "--set", "baselines=[multi_task]"]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| adashare |" in report and "| multi_task |" in report and "policy.png" in report


def test_cli_errors(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code = main(["adashare", "warmup", "--config", str(config), "--set", "train.bogus=1"])
    assert code == 2 and "train.bogus" in capsys.readouterr().err
    code = main(["adashare", "visualize", "--run-dir", str(tmp_path / "none")])
    assert code == 2 and "policies" in capsys.readouterr().err


def test_demo_yaml_mirrors_the_built_in_demo():
    from efficientdl.adashare.config import demo_config
    from efficientdl.core.recipes import resolve_recipe

    path = resolve_recipe("procedural_demo", "adashare")
    assert yaml.safe_load(path.read_text()) == demo_config()
