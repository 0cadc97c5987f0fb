"""The AdaShare speed benchmark: every variant timed and reported, learned policies read from a
run folder, and the speed targets' met/missed logic (benchmarks/adashare_speed.py)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdl.adashare import AdaShareNet, bench, flops

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name):
    """The module of benchmarks/<name>.py (the benchmark scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


adashare_speed = _script("adashare_speed")


def test_speed_benchmark_runs_and_reports_each_target(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    learned = {"tasks": list(bench.TASKS), "execute": [[1, 0] * 4, [0, 1] * 4, [1] * 8]}
    (run / "adashare_result.json").write_text(json.dumps({"policy": learned}))
    out = tmp_path / "speed.json"
    args = (
        "--backbone resnet18 --width 4 --size 33 --threads 1 --warmup 0 --iters 1 "
        "--train-warmup 0 --train-iters 1 --sweep 0 8 --sweep-iters 1 --channels-last "
        f"--policy 01011100 01011110 11100110 --run-dir {run} --out {out}".split()
    )
    assert adashare_speed.main(args) == 0
    assert "learned policy" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert {
        "search_step_official",
        "search_step_fast_nchw_fp32",
        "tree_inference_worst_case",
        "tree_inference_learned",
        "official_learned_inference",
    } <= set(res["main"])
    assert all(row["ms"] > 0 for row in res["main"].values())
    assert res["main"]["search_step_fast"]["saved_mb"] > 0
    model = AdaShareNet("resnet18", bench.TASKS, "aspp", width=4)
    policy = bench.policy_from_strings(bench.TASKS, ["01011100", "01011110", "11100110"])
    assert res["tree_stats"]["macs"] == flops(model, 33, 33, policy)["macs_shared"]
    assert res["hard_macs"] == flops(model, 33, 33)["macs_shared"]
    assert res["sweep"]["0"]["macs"] > res["sweep"]["8"]["macs"]
    assert len(res["targets"]) == 6 and all(isinstance(t["met"], bool) for t in res["targets"])
    learned_row = bench.policy_from_strings(bench.TASKS, ["10" * 4, "01" * 4, "1" * 8])
    assert bench.learned_policy(run, 8) == learned_row
    with pytest.raises(ValueError, match="needs \\('seg', 'normal', 'depth'\\) and 16 blocks"):
        bench.learned_policy(run, 16)
    with pytest.raises(FileNotFoundError, match="no selected AdaShare policy"):
        bench.learned_policy(tmp_path, 8)
    with pytest.raises(ValueError, match="0/1"):
        bench.policy_from_strings(bench.TASKS, ["0102", "1111", "0000"])


def _met(res, precision):
    """{target: met} of hand-made CUDA results."""
    rows = adashare_speed.targets(res, torch.device("cuda"), precision)
    return {t["target"]: t["met"] for t in rows}


def test_gpu_speed_targets():
    """The met/missed logic on hand-made CUDA timings: tree ≤ hard sharing, search ≤ 126.9 ms and
    ≥ 1.6× (bf16) faster than official mode with lower peak, inference peak ≤ 1.1× official."""

    def row(ms, peak):
        return {"ms": ms, "peak_mb": peak}

    res = {
        "main": {
            "search_step_fast": row(100.0, 8000.0),
            "search_step_official": row(180.0, 14000.0),
            "tree_inference": row(30.0, 1100.0),
            "official_policy_inference": row(60.0, 1000.0),
            "hard_inference": row(31.0, 900.0),
        },
        "sweep": {"0": {"ms": 3.0}, "8": {"ms": 2.0}},
        "tree_stats": {"macs": 107},
        "hard_macs": 100,
    }
    overhead = "tree inference / hard inference <= 1.02 x its MAC ratio 1.070"
    assert _met(res, "bf16") == {
        overhead: True,
        "tree inference (benchmark policy) / hard-sharing inference <= 1.0": True,
        "search step <= 203/1.6 = 126.9 ms (official anchor)": True,
        "search step peak < 14.9 GB and < official mode": True,
        "official-mode search step / ours >= 1.6 (bf16)": True,
        "tree inference peak / official-mode policy inference peak <= 1.1": True,
    }
    res["main"]["tree_inference"] = row(32.0, 1200.0)
    res["main"]["search_step_official"] = row(150.0, 7000.0)
    assert _met(res, "fp32") == {
        overhead: True,  # 32 / 31 = 1.032 <= 1.02 × 1.07 = 1.091
        "tree inference (benchmark policy) / hard-sharing inference <= 1.0": False,
        "search step <= 203/1.6 = 126.9 ms (official anchor)": True,
        "search step peak < 14.9 GB and < official mode": False,
        "official-mode search step / ours >= 1.2 (fp32)": True,
        "tree inference peak / official-mode policy inference peak <= 1.1": False,
    }
    res["main"]["tree_inference"] = row(34.0, 1200.0)  # 34 / 31 = 1.097 > 1.091
    assert _met(res, "fp32")[overhead] is False


adashare_table = _script("adashare_table")


def _arm(folder: Path, left: float, right: float, *, name="result.json", **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "test": {"left": {"acc": left, "loss": 0.1}, "right": {"acc": right, "loss": 0.1}},
        "params": {"total": 100, "backbone_units": 1},
        "flops": {"flops_shared": 2e9},
    } | extra
    (folder / name).write_text(json.dumps(result))


def test_table_pairs_every_arm_with_hard_sharing_seed_by_seed(tmp_path):
    # two seeds; hand-computed Δ_T (mean over tasks of the relative accuracy change, in %)
    accs = {
        "seed_a": {"st": (50, 40), "mt": (55, 40), "ada": (50, 44), "mtan": (45, 40)},
        "seed_b": {"st": (80, 80), "mt": (80, 72), "ada": (88, 80), "mtan": (80, 80)},
    }
    policy = {"tasks": ["left", "right"], "execute": [[1, 0, 1], [0, 1, 1]]}
    for seed, a in accs.items():
        root = tmp_path / seed
        _arm(root / "baselines" / "single_task", *a["st"])
        _arm(root / "baselines" / "multi_task", *a["mt"])
        _arm(root / "baselines" / "mtan", *a["mtan"])
        _arm(root, *a["ada"], name="adashare_result.json", policy=policy, selected=1,
             val_scores=[0.5, 1.5], num_executed={"left": 2, "right": 2})  # fmt: skip
        for i, (left, right) in enumerate([a["ada"], (60, 40)]):  # selected and another
            sample = root / "retrain" / f"sample_{i:02d}"
            sample.mkdir(parents=True)
            test = {"left": {"acc": left}, "right": {"acc": right}}
            (sample / "test.json").write_text(json.dumps(test))
        (root / "search").mkdir()
        hist = {"counts": [3, 0, 0, 0, 0, 0, 0, 0, 0, 3], "decided_fraction": 1.0}
        done = {"cycles": 30, "last_policy_tau": 0.02, "select_histogram": hist}
        (root / "search" / "done.json").write_text(json.dumps(done))
    summary = adashare_table.summarize(sorted(tmp_path.iterdir()), "mnist")
    arms = summary["arms"]
    assert list(arms) == ["single_task", "multi_task", "mtan", "adashare"]
    # seed_a: hard sharing (+10 + 0)/2 = +5, AdaShare (0 + 10)/2 = +5; seed_b: −5 and +5
    assert arms["multi_task"]["delta_t_vs_single_task"] == pytest.approx(
        {"seed_a": 5, "seed_b": -5}
    )
    assert arms["adashare"]["delta_t_minus_hard_sharing"] == pytest.approx(
        {"seed_a": 0, "seed_b": 10}
    )
    assert arms["mtan"]["delta_t_minus_hard_sharing"] == pytest.approx({"seed_a": -10, "seed_b": 5})
    assert arms["adashare"]["policies"]["seed_a"] == {"left": "101", "right": "011"}
    text = adashare_table.markdown(summary)
    paired = "| all | **Δ_T − hard sharing's Δ_T** (paired by seed) ↑ |"
    assert f"{paired} 0 ± 7.1 | 0 ± 0 | -2.5 ± 11 | 5 ± 7.1 |" in text
    assert "- adashare − mtan, Δ_T points: 7.5 ± 3.5 (+10.00, +5.00)" in text
    assert "seed_a adashare: 30 cycles, τ 0.02, 100 % decided" in text
    # every sample: seed_a +5 and (+20 + 0)/2 = +10; seed_b +5 and (−25 − 50)/2 = −37.5
    samples = arms["adashare"]["every_sample_delta_t_vs_single_task"]
    assert samples == {"seed_a": pytest.approx([5, 10]), "seed_b": pytest.approx([5, -37.5])}


def test_table_refuses_a_file_in_place_of_a_run_folder(tmp_path):
    stray = tmp_path / "seed_a.log"  # what a `seed_*` glob also matches beside the run folders
    stray.write_text("log\n")
    script = Path(adashare_table.__file__)
    proc = subprocess.run([sys.executable, str(script), str(stray)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"adashare_table: {stray} is not a run folder (expected a folder that "
        "`efficientdl adashare pipeline --run-dir` wrote)"
    ]
