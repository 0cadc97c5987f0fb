"""Task metrics aggregated independently of the batch size, and Δ_T.

Predictions are upsampled to the target size (`nearest` [code] or `bilinear`). Percentages are
reported in % (mIoU, pixel accuracy, within-angle, δ, accuracy), errors in target units.

Surface normals are scored two ways. `mean`, `median`, `rmse`, `within_*` and `cos_sim` are the
true angles between the unit prediction and the unit target. The `official_` ones are the angles
as the official code measures them, and so the paper's numbers: between the vectors of the raw
8-bit encoding v = (n + 1)/2 · 255, not between the unit normals n (the encoding maps the unit
sphere onto a sphere off the origin, so these angles are smaller, about half). Δ_T counts the
`official_` normal angles (`DELTA_METRICS`, the paper's metric set per task).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NORMAL_THRESHOLDS = {
    "within_11_25": 11.25,
    "within_22_5": 22.5,
    "within_30": 30.0,
    "within_45": 45.0,
}
UPSAMPLE_MODES = ("nearest", "bilinear")

_SEG = {"miou": True, "pixel_acc": True}
_NORMAL = {
    "official_mean": False,
    "official_median": False,
    "official_within_11_25": True,
    "official_within_22_5": True,
    "official_within_30": True,
}
_DEPTH = {"abs_err": False, "rel_err": False, "delta1": True, "delta2": True, "delta3": True}
_L1 = {"abs_err": False}
DELTA_METRICS: dict[str, dict[str, dict[str, bool]]] = {
    "nyu": {"seg": _SEG, "normal": _NORMAL, "depth": _DEPTH},
    "cityscapes": {"seg": _SEG, "depth": _DEPTH},
    "procedural": {"seg": _SEG, "normal": _NORMAL, "depth": _DEPTH, "keypoint": _L1, "edge": _L1},
    "taskonomy": {
        "seg": {"ce_err": False},
        "normal": {"official_cos_sim": True},
        "depth": _L1,
        "keypoint": _L1,
        "edge": _L1,
    },
    "mnist": {"left": {"acc": True}, "right": {"acc": True}},
}
"""The paper's metrics per task and dataset preset, as the official code computes them, with
their direction (True = higher is better): the metrics Δ_T counts."""


def upsample(pred: torch.Tensor, size, mode: str = "nearest") -> torch.Tensor:
    """Resize dense predictions [B, C, h, w] to `size` (nearest [code] or bilinear)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample mode {mode!r}; expected one of {UPSAMPLE_MODES}")
    size = tuple(size)
    if tuple(pred.shape[-2:]) == size:
        return pred
    if mode == "nearest":
        return F.interpolate(pred, size=size, mode="nearest")
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Counts [C, C] (rows = target, columns = prediction) over pixels with target in [0, C)."""
    del ignore_index  # any target outside [0, C) drops out, the ignore value included
    valid = (target >= 0) & (target < num_classes)
    idx = target[valid].long() * num_classes + pred[valid].long()
    counts = torch.bincount(idx.cpu(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou(conf: torch.Tensor, zero_tp: str = "count") -> float:
    """Mean IoU in % over classes with a non-empty union; 'drop' also drops TP = 0 [code]."""
    if zero_tp not in ("count", "drop"):
        raise ValueError(f"zero_tp must be 'count' or 'drop', got {zero_tp!r}")
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    keep = union > 0
    if zero_tp == "drop":
        keep &= tp > 0
    if not bool(keep.any()):
        return 0.0
    return float((tp[keep] / union[keep]).mean() * 100)


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees [B, H, W] between normalised pred and target ([B, 3, H, W])."""
    cos = (F.normalize(pred.double(), dim=1) * F.normalize(target.double(), dim=1)).sum(1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def official_normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees [B, H, W] as the official code measures them: between the raw 8-bit
    encodings (n + 1)/2 of the unit prediction and of the target (given in [−1, 1])."""
    raw_pred = (F.normalize(pred.double(), dim=1) + 1.0) / 2.0
    return normal_angles(raw_pred, (target.double() + 1.0) / 2.0)


def _valid(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(target.shape[0], *target.shape[-2:], dtype=torch.bool)
    return mask.bool().reshape(target.shape[0], *target.shape[-2:]).cpu()


class SegmentationMeter:
    """Confusion matrix pooled over the split → `miou`, `miou_official`; per-image `pixel_acc`."""

    def __init__(self, num_classes: int, ignore_index: int = 255, *, upsample: str = "nearest"):
        self.num_classes, self.ignore_index, self.mode = num_classes, ignore_index, upsample
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.image_acc: list[float] = []

    def update(self, pred, target, mask=None) -> None:
        """`pred`: logits [B, C, h, w] or labels [B, H, W]; `target` [B, H, W]."""
        target = target.cpu()
        if pred.dim() == 4:
            pred = upsample(pred.detach().float(), target.shape[-2:], self.mode).argmax(1)
        pred = pred.cpu()
        valid = (target >= 0) & (target < self.num_classes) & _valid(target, mask)
        target = torch.where(valid, target, torch.full_like(target, -1))
        self.conf += confusion_matrix(pred, target, self.num_classes)
        n = valid.flatten(1).sum(1)
        correct = ((pred == target) & valid).flatten(1).sum(1)
        self.image_acc += (correct[n > 0].double() / n[n > 0]).tolist()

    def compute(self) -> dict:
        acc = float(np.mean(self.image_acc) * 100) if self.image_acc else 0.0
        return {
            "miou": miou(self.conf, "count"),
            "miou_official": miou(self.conf, "drop"),
            "pixel_acc": acc,
            "confusion": self.conf.tolist(),
        }


NORMAL_ENCODINGS = ("unit", "official_raw")


def _angle_stats(theta: np.ndarray, prefix: str = "") -> dict:
    out = {
        "mean": float(theta.mean()),
        "median": float(np.median(theta)),
        "rmse": float(np.sqrt((theta**2).mean())),
    }
    out |= {k: float((theta <= t).mean() * 100) for k, t in NORMAL_THRESHOLDS.items()}
    out["cos_sim"] = float(np.cos(np.deg2rad(theta)).mean())
    return {prefix + k: v for k, v in out.items()}


class NormalMeter:
    """Angular errors pooled over valid pixels: mean, median, rmse, within_*, cos_sim of the
    true angles, and the same of the official angles with the prefix `official_`.

    `encoding='unit'`: targets are unit normals (the datasets' default). 'official_raw': targets
    are raw 8-bit values and the network predicts in that space (`parity.normals_encoding`), so
    the angles it gives are the official ones and no true angle exists for the prediction; only
    the `official_` metrics are reported.
    """

    def __init__(self, *, upsample: str = "nearest", encoding: str = "unit"):
        if encoding not in NORMAL_ENCODINGS:
            raise ValueError(f"unknown normals encoding {encoding!r}; expected {NORMAL_ENCODINGS}")
        self.mode, self.encoding = upsample, encoding
        self.angles: list[np.ndarray] = []
        self.official: list[np.ndarray] = []

    def update(self, pred, target, mask=None) -> None:
        target = target.cpu()
        pred = upsample(pred.detach().cpu(), target.shape[-2:], self.mode)
        valid = _valid(target, mask)
        if self.encoding == "official_raw":
            self.official.append(normal_angles(pred, target)[valid].numpy())
            return
        self.angles.append(normal_angles(pred, target)[valid].numpy())
        self.official.append(official_normal_angles(pred, target)[valid].numpy())

    def compute(self) -> dict:
        out = {}
        for prefix, parts in (("", self.angles), ("official_", self.official)):
            theta = np.concatenate(parts) if parts else np.zeros(0)
            if theta.size:
                out |= _angle_stats(theta, prefix)
        if not out:
            raise ValueError("NormalMeter: no valid pixels were seen")
        return out


class _PerImage:
    """Shared bookkeeping: per-image means of some quantities, pooled sums of others."""

    def __init__(self, *, upsample: str = "nearest"):
        self.mode = upsample
        self.images: dict[str, list[float]] = {}
        self.pooled: dict[str, float] = {}

    def _add_images(self, name: str, sums: torch.Tensor, counts: torch.Tensor) -> None:
        keep = counts > 0
        self.images.setdefault(name, []).extend((sums[keep] / counts[keep]).tolist())

    def _add_pooled(self, name: str, value: float) -> None:
        self.pooled[name] = self.pooled.get(name, 0.0) + value

    def _mean(self, name: str) -> float:
        values = self.images.get(name, [])
        return float(np.mean(values)) if values else math.nan

    def _prepare(self, pred, target, mask):
        target = target.detach().cpu().double()
        pred = upsample(pred.detach().cpu().double(), target.shape[-2:], self.mode)
        valid = _valid(target, mask)
        return pred, target, valid


class DepthMeter(_PerImage):
    """abs_err, rel_err, sq_rel per image then averaged; pooled rmse and δ1..3 (p ≤ 0 fails).

    Valid pixels: the mask and target > 0 (NYUv2, CityScapes: 0 = invalid). With
    `explicit_mask=True` (Taskonomy) the mask alone, so a valid target of 0 counts in
    abs_err and rmse; rel_err, sq_rel and δ, undefined there, use the valid pixels with t > 0.
    """

    def __init__(self, *, upsample: str = "nearest", explicit_mask: bool = False):
        super().__init__(upsample=upsample)
        self.explicit_mask = explicit_mask

    def update(self, pred, target, mask=None) -> None:
        """`pred`, `target` [B, 1, H, W]; `mask` [B, H, W] (default: target > 0, or all pixels
        with `explicit_mask`)."""
        pred, target, valid = self._prepare(pred, target, mask)
        p, t = pred[:, 0], target[:, 0]
        rel = valid & (t > 0)
        if not self.explicit_mask:
            valid = rel
        safe_t = torch.where(rel, t, torch.ones_like(t))
        err = (p - t).abs() * valid
        rel_err = err * rel / safe_t
        count, rel_count = valid.flatten(1).sum(1).double(), rel.flatten(1).sum(1).double()
        self._add_images("abs_err", err.flatten(1).sum(1), count)
        self._add_images("rel_err", rel_err.flatten(1).sum(1), rel_count)
        self._add_images("sq_rel", (err * rel_err).flatten(1).sum(1), rel_count)
        self._add_pooled("sq_err", float((err**2).sum()))
        self._add_pooled("count", float(count.sum()))
        self._add_pooled("rel_count", float(rel_count.sum()))
        safe_p = torch.where(p > 0, p, torch.ones_like(p))
        ratio = torch.where(p > 0, torch.maximum(safe_p / safe_t, safe_t / safe_p), math.inf)
        for i in (1, 2, 3):
            self._add_pooled(f"delta{i}", float(((ratio <= 1.25**i) & rel).sum()))

    def compute(self) -> dict:
        n = self.pooled.get("count", 0.0)
        if n == 0:
            raise ValueError("DepthMeter: no valid pixels were seen")
        out = {k: self._mean(k) for k in ("abs_err", "rel_err", "sq_rel")}
        out["rmse"] = math.sqrt(self.pooled["sq_err"] / n)
        n_rel = self.pooled["rel_count"]
        out |= {
            f"delta{i}": self.pooled[f"delta{i}"] / n_rel * 100 if n_rel else math.nan
            for i in (1, 2, 3)
        }
        return out


class L1Meter(_PerImage):
    """Mean |p − t| over valid pixels (and channels) per image, averaged over images."""

    def update(self, pred, target, mask=None) -> None:
        pred, target, valid = self._prepare(pred, target, mask)
        m = valid.unsqueeze(1).double().expand_as(target)
        self._add_images(
            "abs_err", ((pred - target).abs() * m).flatten(1).sum(1), m.flatten(1).sum(1)
        )

    def compute(self) -> dict:
        return {"abs_err": self._mean("abs_err")}


class CEMeter(_PerImage):
    """Per-image (class-weighted) cross-entropy over valid pixels, averaged over images."""

    def __init__(self, class_weight=None, ignore_index: int = 255, *, upsample: str = "nearest"):
        super().__init__(upsample=upsample)
        self.weight = None if class_weight is None else torch.as_tensor(class_weight).double()
        self.ignore_index = ignore_index

    def update(self, pred, target, mask=None) -> None:
        target = target.cpu().long()
        pred = upsample(pred.detach().cpu().double(), target.shape[-2:], self.mode)
        valid = (target != self.ignore_index) & _valid(target, mask) & (target >= 0)
        safe = torch.where(valid, target, torch.zeros_like(target))
        nll = -torch.log_softmax(pred, 1).gather(1, safe.unsqueeze(1))[:, 0]
        w = torch.ones_like(nll) if self.weight is None else self.weight[safe]
        w = w * valid
        self._add_images("ce_err", (w * nll).flatten(1).sum(1), w.flatten(1).sum(1))

    def compute(self) -> dict:
        return {"ce_err": self._mean("ce_err")}


class AccuracyMeter:
    """Classification accuracy in %."""

    def __init__(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, pred, target, mask=None) -> None:
        del mask
        self.correct += int((pred.detach().argmax(1).cpu() == target.cpu()).sum())
        self.total += target.numel()

    def compute(self) -> dict:
        return {"acc": 100.0 * self.correct / max(self.total, 1)}


def delta_t(results: dict, single_task_results: dict, higher_is_better: dict) -> dict:
    """Δ_T: per task, the mean over its metrics of (−1)^l (M − M_ST)/M_ST × 100 (l = 1 when
    lower is better); Δ_T = mean over tasks. Only metrics named in `higher_is_better` are used."""
    per_task = {}
    for task, metrics in higher_is_better.items():
        terms = []
        for metric, higher in metrics.items():
            for name, source in (
                ("results", results),
                ("single_task_results", single_task_results),
            ):
                if metric not in source.get(task, {}):
                    raise KeyError(f"{name} lacks metric {metric!r} of task {task!r}")
            ref, value = single_task_results[task][metric], results[task][metric]
            if ref == 0:
                raise ValueError(f"single-task {task}.{metric} is 0; Δ_T is undefined")
            sign = 1.0 if higher else -1.0
            terms.append(sign * (value - ref) / ref * 100.0)
        if not terms:
            raise ValueError(f"no metrics given for task {task!r}")
        per_task[task] = float(np.mean(terms))
    if not per_task:
        raise ValueError("higher_is_better names no task")
    return {"per_task": per_task, "delta_t": float(np.mean(list(per_task.values())))}
