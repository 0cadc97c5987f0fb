"""Baselines (single-task, hard sharing, random policy, stochastic depth, and the soft-sharing
Cross-Stitch, Sluice, NDDR-CNN and MTAN networks) with the re-training recipe, iterations and
splits, and the ablations (w/o sparsity, w/o sharing, w/o curriculum, REINFORCE search)
as child AdaShare runs in `baselines/<name>/`."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from efficientdl.adashare.config import ABLATIONS, AdaShareConfig, check_sluice_width
from efficientdl.adashare.folders import ADASHARE_RESULT, RESULT, read_result, write_json
from efficientdl.adashare.model import Policy, TreeExecutor, flops
from efficientdl.adashare.model.soft_sharing import SOFT_SHARING, make_soft_sharing
from efficientdl.adashare.phases.context import open_context
from efficientdl.adashare.phases.evaluation import test
from efficientdl.adashare.phases.phase import SELECT
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.search import gate_generator
from efficientdl.adashare.phases.training import train_fixed
from efficientdl.adashare.reporting.results import cost_summary, image_size
from efficientdl.core import RunFolderError, seed_everything
from efficientdl.core.config import apply_overrides, from_dict, to_dict
from efficientdl.core.log import get_logger
from efficientdl.core.registry import get, register
from efficientdl.core.run import stored_run

log = get_logger("adashare")


def survival_probs(num_blocks: int) -> torch.Tensor:
    """Stochastic-depth survival p_l = 1 − 0.5·l/L, l = 1…L counted from the input [code]."""
    return 1 - 0.5 * torch.arange(1, num_blocks + 1, dtype=torch.float64) / num_blocks


def random_policy(ctx, tasks, num_blocks: int) -> Policy:
    """Each (task, block) executes with p = 0.5 (seeded); with `random_policy.match_counts`, each
    task keeps the AdaShare policy's executed-block count at uniformly random positions."""
    g = torch.Generator().manual_seed(ctx.cfg.seed + 7919)
    if not ctx.cfg.random_policy.match_counts:
        return Policy(tasks, torch.rand(len(tasks), num_blocks, generator=g) < 0.5)
    path = ctx.run_dir / ADASHARE_RESULT
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


def _train_and_test(ctx, folder, model, train_forward, eval_forward, spec, policy=None) -> dict:
    """Train with the re-training recipe, then test (cached in `folder/result.json`)."""
    cfg = ctx.cfg
    result = train_fixed(
        ctx,
        folder=folder,
        model=model,
        train_forward=train_forward,
        eval_forward=eval_forward,
        spec=spec,
        iters=cfg.retrain.iters,
        val_freq=cfg.retrain.val_freq,
        seed=cfg.seed,
        phase=folder.name,
        reference=reference(ctx) if len(spec.tasks) == len(ctx.spec.tasks) else None,
    )
    if "test" not in result:
        result["test"] = test(ctx, eval_forward, spec, model)
        result |= cost_summary(model, image_size(ctx.splits), policy)
        if policy is not None:
            result["policy"] = policy.to_dict()
        ctx.on_main(write_json, folder / RESULT, result)
    return result


@register("baseline", "single_task", doc="one network per task, the Δ_T reference")
def single_task(ctx, folder) -> dict:
    """One hard-sharing network per task; parameters and FLOPs summed over the tasks."""
    parts = {}
    for task in ctx.spec.tasks:
        model = ctx.build_model([task])
        parts[task] = _train_and_test(
            ctx,
            folder / task,
            model,
            lambda x, it, m=model: m(x),
            lambda x, b, m=model: m(x),
            ctx.spec.subset([task]),
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


def ablation(ctx, folder, *, overrides: tuple[str, ...]) -> dict:
    """A child AdaShare run in `folder` with `overrides`, selected against this run's reference;
    it shares the run's data, divergence guard and TensorBoard (tags under baselines/<name>/)."""
    name = folder.name
    ref = reference(ctx)
    data = apply_overrides(to_dict(ctx.cfg), [*overrides, f"name={name}", "baselines=[]"])
    if ref is not None:
        ctx.on_main(write_json, folder / "reference.json", {"val": ref})
        data["selection_reference"] = str(folder / "reference.json")
    child = open_context(
        from_dict(AdaShareConfig, data), run_dir=folder, datasets=(ctx.splits, ctx.spec)
    )
    ctx.begin()  # the parent run is recorded before its child trains
    child = replace(
        child, guard=ctx.guard, board=ctx.board, tb_prefix=f"{ctx.tb_prefix}baselines/{name}/"
    )
    return SELECT.run(child)


for _name, _overrides in ABLATIONS.items():
    register(
        "baseline", _name, doc=f"AdaShare with {', '.join(_overrides)}", overrides=tuple(_overrides)
    )(ablation)


@register("baseline", "multi_task", doc="hard sharing: every task executes every block")
def multi_task(ctx, folder) -> dict:
    """Hard sharing with the re-training recipe."""
    model = ctx.build_model()
    return _train_and_test(
        ctx, folder, model, lambda x, it: model(x), lambda x, b: model(x), ctx.spec
    )


@register("baseline", "random_policy", doc="a seeded random select-or-skip policy")
def random_policy_baseline(ctx, folder) -> dict:
    """A random policy (`random_policy`) re-trained with true skipping."""
    model = ctx.build_model()
    policy = random_policy(ctx, model.tasks, model.num_blocks)
    executor = TreeExecutor(model, policy)
    return _train_and_test(
        ctx,
        folder,
        model,
        lambda x, it: model(x, policy),
        lambda x, b: executor(x),
        ctx.spec,
        policy,
    )


@register("baseline", "stochastic_depth", doc="stochastic depth, p_l = 1 − 0.5·l/L [code]")
def stochastic_depth(ctx, folder) -> dict:
    """Blocks dropped per iteration with the survival probabilities p_l; evaluated with the
    expectation, which needs every block in K separate passes (no sharing at evaluation)."""
    model = ctx.build_model()
    probs = survival_probs(model.num_blocks)
    expectation = torch.stack([probs, 1 - probs], -1).expand(len(model.tasks), -1, -1)

    def sd_train(x, it):
        draw = (
            torch.rand(
                len(model.tasks), model.num_blocks, generator=gate_generator(ctx.cfg.seed, it)
            )
            < probs
        )
        return model(x, Policy(model.tasks, draw))

    result = _train_and_test(
        ctx,
        folder,
        model,
        sd_train,
        lambda x, b: model(x, expectation.to(x.device, x.dtype)),
        ctx.spec,
    )
    all_blocks = Policy(
        model.tasks, torch.ones(len(model.tasks), model.num_blocks, dtype=torch.bool)
    )
    cost = flops(model, *image_size(ctx.splits), all_blocks)
    result["flops"] = cost | {
        "macs_shared": cost["macs_per_task_sum"],
        "flops_shared": cost["flops_per_task_sum"],
    }
    return result


SOFT_SHARING_DOCS = {
    "cross_stitch": "Cross-Stitch: K task columns, a learned α [K, K] mixes them after each stage",
    "sluice": "Sluice: K columns, α over 2 channel subspaces per task, β mixes last-stage blocks",
    "nddr_cnn": "NDDR-CNN: K columns, per task concat → 1×1 conv → BN → ReLU after each stage",
    "mtan": "MTAN: one shared network, per-task soft attention masks at every stage",
}


def soft_sharing(ctx, folder, *, network: str) -> dict:
    """The soft-sharing network `network` (same backbone, heads, init seed and re-training recipe
    as hard sharing), trained and tested; parameters and FLOPs by `soft_sharing_flops`."""
    m = ctx.cfg.model
    if network == "sluice":
        check_sluice_width(m.width)
    seed_everything(ctx.cfg.seed)
    model = make_soft_sharing(
        network,
        m.backbone,
        ctx.spec.channels,
        m.head,
        stem=m.stem,
        in_channels=int(ctx.splits["train"][0]["image"].shape[0]),
        width=m.width,
        init_same=ctx.cfg.soft_sharing.init_same,
    ).to(ctx.device)
    if ctx.cfg.perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return _train_and_test(
        ctx, folder, model, lambda x, it: model(x), lambda x, b: model(x), ctx.spec
    )


for _name in SOFT_SHARING:
    register("baseline", _name, doc=SOFT_SHARING_DOCS[_name], network=_name)(soft_sharing)


def baseline_done(ctx, name: str) -> bool:
    """baselines/<name>/result.json holds test metrics."""
    done = read_result(ctx.run_dir / "baselines" / name)
    return done is not None and "test" in done


def run_baseline(ctx, name: str) -> dict:
    """Train, validate and test the registered baseline or ablation `name`; results in
    baselines/<name>/result.json."""
    entry = get("baseline", name)
    folder = ctx.run_dir / "baselines" / name
    done = read_result(folder)
    if done is not None and "test" in done:
        child = stored_run(folder) if name in ABLATIONS else None
        searched = child["config"]["train"]["total_iters"] if child else None
        if searched is not None and searched < ctx.cfg.train.total_iters:
            raise RunFolderError(
                f"train.total_iters={ctx.cfg.train.total_iters}: the {name} ablation in "
                f"{folder} finished with {searched} search iterations; keep "
                f"total_iters={searched} or start a new run"
            )
        log.info("baseline %s: done (%s), skipped", name, folder / RESULT)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    result = entry.create(ctx=ctx, folder=folder)
    ctx.on_main(write_json, folder / RESULT, result)
    return result


def run_baselines(ctx) -> dict:
    """Every baseline of `cfg.baselines`, {name: result}."""
    return {name: run_baseline(ctx, name) for name in ctx.cfg.baselines}


def baselines_done(ctx) -> bool:
    return all(baseline_done(ctx, name) for name in ctx.cfg.baselines)
