"""Baselines (single-task, hard sharing, random policy, stochastic depth) with the re-training
recipe, iterations and splits, and the ablations (w/o sparsity, w/o sharing, w/o curriculum,
REINFORCE search) as child AdaShare runs in `baselines/<name>/`."""

from __future__ import annotations

import json

import torch

from efficientdl.adashare import loops
from efficientdl.adashare.config import ABLATIONS, BASELINES, AdaShareConfig
from efficientdl.adashare.counting import flops
from efficientdl.adashare.executor import TreeExecutor
from efficientdl.adashare.policy import Policy
from efficientdl.adashare.results import ADASHARE_RESULT, cost_summary, image_size
from efficientdl.adashare.search import gate_generator
from efficientdl.core import ConfigError, RunFolderError
from efficientdl.core.config import apply_overrides, from_dict, to_dict
from efficientdl.core.log import get_logger
from efficientdl.core.run import stored_run

log = get_logger("adashare")


def survival_probs(num_blocks: int) -> torch.Tensor:
    """Stochastic-depth survival p_l = 1 − 0.5·l/L, l = 1…L counted from the input [code]."""
    return 1 - 0.5 * torch.arange(1, num_blocks + 1, dtype=torch.float64) / num_blocks


def random_policy(trainer, tasks, num_blocks: int) -> Policy:
    """Each (task, block) executes with p = 0.5 (seeded); with `random_policy.match_counts`, each
    task keeps the AdaShare policy's executed-block count at uniformly random positions."""
    g = torch.Generator().manual_seed(trainer.cfg.seed + 7919)
    if not trainer.cfg.random_policy.match_counts:
        return Policy(tasks, torch.rand(len(tasks), num_blocks, generator=g) < 0.5)
    path = trainer.run_dir / ADASHARE_RESULT
    if not path.is_file():
        raise RunFolderError(
            f"random_policy.match_counts needs the AdaShare result {path}: run "
            "`efficientdl adashare select` in this run folder first"
        )
    counts = Policy.from_dict(json.loads(path.read_text())["policy"]).num_executed()
    execute = torch.zeros(len(tasks), num_blocks, dtype=torch.bool)
    for k, t in enumerate(tasks):
        execute[k, torch.randperm(num_blocks, generator=g)[: counts[t]]] = True
    return Policy(tasks, execute)


def _train_and_test(trainer, folder, model, train_forward, eval_forward, spec, policy=None) -> dict:
    cfg = trainer.cfg
    result = loops.train_fixed(
        trainer,
        folder=folder,
        model=model,
        train_forward=train_forward,
        eval_forward=eval_forward,
        spec=spec,
        iters=cfg.retrain.iters,
        val_freq=cfg.retrain.val_freq,
        seed=cfg.seed,
        phase=folder.name,
        reference=trainer.reference() if len(spec.tasks) == len(trainer.spec.tasks) else None,
    )
    if "test" not in result:
        result["test"] = trainer.test(eval_forward, spec, model)
        result |= cost_summary(model, image_size(trainer), policy)
        if policy is not None:
            result["policy"] = policy.to_dict()
        trainer.on_main(loops.write_json, folder / loops.RESULT, result)
    return result


def _single_task(trainer, folder) -> dict:
    parts = {}
    for task in trainer.spec.tasks:
        model = trainer.build_model([task])
        parts[task] = _train_and_test(
            trainer,
            folder / task,
            model,
            lambda x, it, m=model: m(x),
            lambda x, b, m=model: m(x),
            trainer.spec.subset([task]),
        )
    units = len(parts)
    params = {
        k: sum(p["params"][k] for p in parts.values())
        for k in ("total", "backbone", "heads", "union")
    }
    params |= {
        "per_task": {t: p["params"]["total"] for t, p in parts.items()},
        "backbone_units": units,
    }
    first = next(iter(parts.values()))
    cost = {k: sum(p["flops"][k] for p in parts.values()) for k in first["flops"]}
    return {
        "phase": "single_task",
        "val": {t: p["val"][t] for t, p in parts.items()},
        "test": {t: p["test"][t] for t, p in parts.items()},
        "params": params,
        "flops": cost,
    }


def _ablation(trainer, name: str, folder) -> dict:
    from efficientdl.adashare.trainer import AdaShareTrainer

    reference = trainer.reference()
    data = apply_overrides(to_dict(trainer.cfg), ABLATIONS[name] + [f"name={name}", "baselines=[]"])
    if reference is not None:
        trainer.on_main(loops.write_json, folder / "reference.json", {"val": reference})
        data["selection_reference"] = str(folder / "reference.json")
    child = AdaShareTrainer(
        from_dict(AdaShareConfig, data), run_dir=folder, datasets=(trainer.splits, trainer.spec)
    )
    trainer.begin()  # the parent run is recorded before its child trains
    child.guard, child.scalars = trainer.guard, trainer.scalars
    child.tb_prefix = f"{trainer.tb_prefix}baselines/{name}/"
    return child.select()


def run_baseline(trainer, name: str) -> dict:
    """Train, validate and test baseline `name`; results in baselines/<name>/result.json."""
    if name not in BASELINES and name not in ABLATIONS:
        raise ConfigError(
            f"unknown baseline {name!r}; expected one of {list(BASELINES) + list(ABLATIONS)}"
        )
    folder = trainer.run_dir / "baselines" / name
    done = loops.read_result(folder)
    if done is not None and "test" in done:
        child = stored_run(folder) if name in ABLATIONS else None
        searched = child["config"]["train"]["total_iters"] if child else None
        if searched is not None and searched < trainer.cfg.train.total_iters:
            raise RunFolderError(
                f"train.total_iters={trainer.cfg.train.total_iters}: the {name} ablation in "
                f"{folder} finished with {searched} search iterations; keep "
                f"total_iters={searched} or start a new run"
            )
        log.info("baseline %s: done (%s), skipped", name, folder / loops.RESULT)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    if name in ABLATIONS:
        result = _ablation(trainer, name, folder)
        trainer.on_main(loops.write_json, folder / loops.RESULT, result)
        return result
    if name == "single_task":
        result = _single_task(trainer, folder)
        trainer.on_main(loops.write_json, folder / loops.RESULT, result)
        return result
    spec = trainer.spec
    model = trainer.build_model()
    if name == "multi_task":
        return _train_and_test(
            trainer, folder, model, lambda x, it: model(x), lambda x, b: model(x), spec
        )
    if name == "random_policy":
        policy = random_policy(trainer, model.tasks, model.num_blocks)
        executor = TreeExecutor(model, policy)
        return _train_and_test(
            trainer,
            folder,
            model,
            lambda x, it: model(x, policy),
            lambda x, b: executor(x),
            spec,
            policy,
        )
    probs = survival_probs(model.num_blocks)
    expectation = torch.stack([probs, 1 - probs], -1).expand(len(model.tasks), -1, -1)

    def sd_train(x, it):
        draw = (
            torch.rand(
                len(model.tasks), model.num_blocks, generator=gate_generator(trainer.cfg.seed, it)
            )
            < probs
        )
        return model(x, Policy(model.tasks, draw))

    result = _train_and_test(
        trainer,
        folder,
        model,
        sd_train,
        lambda x, b: model(x, expectation.to(x.device, x.dtype)),
        spec,
    )
    # the expectation needs every block in K separate passes: no sharing at evaluation
    all_blocks = Policy(
        model.tasks, torch.ones(len(model.tasks), model.num_blocks, dtype=torch.bool)
    )
    cost = flops(model, *image_size(trainer), all_blocks)
    result["flops"] = cost | {
        "macs_shared": cost["macs_per_task_sum"],
        "flops_shared": cost["flops_per_task_sum"],
    }
    trainer.on_main(loops.write_json, folder / loops.RESULT, result)
    return result
