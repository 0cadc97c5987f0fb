"""The sample phase: hard policies drawn from the searched logits, one seed each."""

from __future__ import annotations

from pathlib import Path

import torch

from efficientdl.adashare.model import Policy
from efficientdl.adashare.phases.search import searched_model
from efficientdl.adashare.reporting.viz import plot_policy
from efficientdl.core.log import get_logger

log = get_logger("adashare")


def policy_paths(ctx) -> list[Path]:
    """policies/policy_NN.json of the `sample.num` draws."""
    return [ctx.run_dir / "policies" / f"policy_{i:02d}.json" for i in range(ctx.cfg.sample.num)]


def sample_done(ctx) -> bool:
    """Every policy file exists."""
    return all(p.is_file() for p in policy_paths(ctx))


def sampled_policies(ctx) -> list[Policy]:
    """The drawn policies, read back."""
    return [Policy.from_json(p) for p in policy_paths(ctx)]


def sample(ctx) -> list[Policy]:
    """Draw `sample.num` hard policies from the searched logits (`sample.seeds`, then seed + i)."""
    s = ctx.cfg.sample
    if sample_done(ctx):
        log.info(
            "sample: %d policies already drawn in %s, skipped", s.num, ctx.run_dir / "policies"
        )
        return sampled_policies(ctx)
    seeds = list(s.seeds) + [ctx.cfg.seed + i for i in range(len(s.seeds), s.num)]
    model, source = searched_model(ctx)
    policies = []
    for seed in seeds[: s.num]:
        p = model.sample_policy(generator=torch.Generator().manual_seed(seed), mode=s.mode)
        policies.append(Policy(p.tasks, p.execute, model.backbone_name, seed, source))
    ctx.on_main(save_policies, ctx.run_dir, policies, policy_paths(ctx), model.execution_probs())
    return policies


def save_policies(run_dir: Path, policies: list[Policy], paths: list[Path], probs) -> None:
    """Write the sampled policies (JSON) and the pictures of α and of policy 0."""
    for policy, path in zip(policies, paths):
        policy.to_json(path)
    plot_policy(
        probs,
        run_dir / "policy_probs.png",
        tasks=policies[0].tasks,
        title="learned execution probabilities α",
    )
    plot_policy(policies[0], run_dir / "policy.png", title="sampled policy 0")
