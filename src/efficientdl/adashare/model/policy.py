"""Select-or-skip policies: hard `Policy`, Gumbel-softmax gates, curriculum padding."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GATE_TOLERANCE = 1e-5


def check_logits(logits: torch.Tensor, num_tasks: int | None = None) -> None:
    """Raise ValueError unless `logits` is [K, L, 2] (with K = num_tasks when given)."""
    if logits.dim() != 3 or logits.shape[-1] != 2:
        raise ValueError(f"policy logits must have shape [K, L, 2], got {tuple(logits.shape)}")
    if num_tasks is not None and logits.shape[0] != num_tasks:
        raise ValueError(f"policy logits have {logits.shape[0]} task rows, expected {num_tasks}")


def check_gates(gates: torch.Tensor, num_tasks: int, num_blocks: int) -> None:
    """Raise ValueError unless `gates` is float [K, L, 2] with rows summing to 1 (±1e-5)."""
    if not torch.is_floating_point(gates):
        raise ValueError(f"gates must be a float tensor, got dtype {gates.dtype}")
    if tuple(gates.shape) != (num_tasks, num_blocks, 2):
        raise ValueError(
            f"gates must have shape [K, L, 2] = {[num_tasks, num_blocks, 2]}, "
            f"got {list(gates.shape)}"
        )
    err = (gates.detach().sum(-1) - 1).abs().max().item()
    if not err <= GATE_TOLERANCE:
        raise ValueError(
            f"gate rows (select, skip) must sum to 1 within {GATE_TOLERANCE}, off by {err:.3g}"
        )


def curriculum_pad(gates: torch.Tensor, n_unlocked: int | None) -> torch.Tensor:
    """Force blocks 0…L−n−1 to execute, gate (1, 0), for every task [code]; `None` means n = L."""
    num_blocks = gates.shape[1]
    if n_unlocked is None or n_unlocked >= num_blocks:
        return gates
    if n_unlocked < 1:
        raise ValueError(f"n_unlocked must be in 1..{num_blocks}, got {n_unlocked!r}")
    forced = torch.zeros_like(gates[:, : num_blocks - n_unlocked])
    forced[..., 0] = 1
    return torch.cat([forced, gates[:, num_blocks - n_unlocked :]], dim=1)


def gumbel_softmax_gates(
    logits: torch.Tensor,
    tau: float,
    *,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """u = softmax((a + g)/τ) over the last axis, g ~ Gumbel(0, 1) i.i.d..

    The noise is drawn on the generator's device (CPU by default) so seeded draws are identical on
    every device and DDP rank. `hard=True`: straight-through one-hot forward, soft gradient.
    """
    check_logits(logits)
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0, got {tau!r}")
    noise_device = generator.device if generator is not None else torch.device("cpu")
    e = torch.empty(logits.shape, dtype=torch.float32, device=noise_device)
    e.exponential_(generator=generator)
    g = (-torch.log(e)).to(device=logits.device, dtype=logits.dtype)
    soft = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = torch.nn.functional.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return one_hot - soft.detach() + soft


@dataclass(frozen=True, eq=False)
class Policy:
    """A hard policy: `execute[k, l]` is True when task k runs block l (False: skip it).

    Optional provenance (`backbone`, `seed`, `checkpoint`) travels with the JSON file.
    """

    tasks: tuple[str, ...]
    execute: torch.Tensor
    backbone: str | None = None
    seed: int | None = None
    checkpoint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        execute = torch.as_tensor(self.execute).detach().to("cpu", torch.bool).clone()
        if execute.dim() != 2 or execute.shape[0] != len(self.tasks):
            raise ValueError(
                f"Policy.execute must be [K, L] with K = {len(self.tasks)} tasks, "
                f"got shape {tuple(execute.shape)}"
            )
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "execute", execute)

    @property
    def num_blocks(self) -> int:
        return self.execute.shape[1]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Policy)
            and self.tasks == other.tasks
            and torch.equal(self.execute, other.execute)
        )

    def __hash__(self) -> int:
        return hash((self.tasks, tuple(self.execute.flatten().tolist())))

    @classmethod
    def from_gates(cls, gates: torch.Tensor, tasks, **provenance) -> Policy:
        """Hard policy from gates [K, L, 2] (execute where u_sel > u_skip)."""
        check_logits(gates, len(tuple(tasks)))
        return cls(tuple(tasks), gates[..., 0] > gates[..., 1], **provenance)

    def gates(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """One-hot gates [K, L, 2]: (1, 0) where executed, (0, 1) where skipped."""
        sel = self.execute.to(dtype=dtype, device=device)
        return torch.stack([sel, 1 - sel], dim=-1)

    def padded(self, n_unlocked: int | None) -> Policy:
        """The policy with blocks 0…L−n−1 forced to execute (curriculum padding)."""
        if n_unlocked is None or n_unlocked >= self.num_blocks:
            return self
        execute = self.execute.clone()
        execute[:, : self.num_blocks - n_unlocked] = True
        return Policy(self.tasks, execute, self.backbone, self.seed, self.checkpoint, self.meta)

    def num_executed(self) -> dict[str, int]:
        """Executed blocks per task."""
        return {t: int(n) for t, n in zip(self.tasks, self.execute.sum(1).tolist())}

    def shared_prefix_length(self, i: int | str, j: int | str) -> int:
        """Number of leading blocks on which tasks i and j take identical decisions."""
        a, b = (self.tasks.index(t) if isinstance(t, str) else t for t in (i, j))
        same = (self.execute[a] == self.execute[b]).tolist() + [False]
        return same.index(False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "backbone": self.backbone,
            "execute": self.execute.to(torch.int64).tolist(),
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "meta": self.meta,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON (tasks, backbone, execute as 0/1 lists, provenance), written to `path` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """Inverse of `to_dict`."""
        missing = {"tasks", "execute"} - set(data)
        if missing:
            raise ValueError(f"policy data lacks {sorted(missing)}")
        execute = torch.tensor(data["execute"], dtype=torch.int64)
        if execute.numel() and not bool(((execute == 0) | (execute == 1)).all()):
            raise ValueError("policy 'execute' must hold 0/1 values")
        return cls(
            tuple(data["tasks"]),
            execute.bool(),
            data.get("backbone"),
            data.get("seed"),
            data.get("checkpoint"),
            data.get("meta") or {},
        )

    @classmethod
    def from_json(cls, source: str | Path) -> Policy:
        """Read a policy from JSON text or a file path."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"policy file {path} does not exist")
            text = path.read_text()
        return cls.from_dict(json.loads(text))
