"""Metric meters against an independent numpy implementation; batch-size independence."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from efficientdl.adashare.objectives.metrics import (
    DELTA_METRICS,
    AccuracyMeter,
    CEMeter,
    DepthMeter,
    L1Meter,
    NormalMeter,
    SegmentationMeter,
    delta_t,
    miou,
    normal_angles,
    official_normal_angles,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)
N, C, H, W = 7, 5, 16, 16  # predictions at 1/8 would be 2×2; use 4×4 → ×4 upsampling


def upsample_np(pred, H, W):
    """Nearest upsampling with floor index mapping: out[i] = in[floor(i·h/H)]."""
    h, w = pred.shape[-2:]
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    return pred[..., rows, :][..., cols]


def run_meter(meter, preds, targets, masks, batch):
    for s in range(0, len(preds), batch):
        sl = slice(s, s + batch)
        m = None if masks is None else torch.from_numpy(masks[sl])
        meter.update(torch.from_numpy(preds[sl]), torch.from_numpy(targets[sl]), m)
    return meter.compute()


@pytest.fixture(scope="module")
def seg_data():
    logits = RNG.normal(size=(N, C, 4, 4))
    target = RNG.integers(0, C, size=(N, H, W))
    target[RNG.random((N, H, W)) < 0.2] = 255
    target[target == 3] = 4  # class 3 absent from targets ...
    logits[:, 3] += 0.5  # ... but predicted: union > 0, TP = 0
    target[0] = 255  # an image without valid pixels
    return logits, target


def seg_reference(logits, target):
    pred = upsample_np(logits, H, W).argmax(1)
    valid = target < C
    conf = np.zeros((C, C), dtype=np.int64)
    np.add.at(conf, (target[valid], pred[valid]), 1)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    ours = (tp[present] / union[present]).mean() * 100
    official = (tp[present & (tp > 0)] / union[present & (tp > 0)]).mean() * 100
    acc = [
        ((pred[i] == target[i]) & valid[i]).sum() / valid[i].sum()
        for i in range(len(target))
        if valid[i].sum() > 0
    ]
    return conf, ours, official, float(np.mean(acc) * 100)


@pytest.mark.parametrize("batch", [1, 3, N])
def test_segmentation_meter(seg_data, batch):
    logits, target = seg_data
    out = run_meter(SegmentationMeter(C), logits, target, None, batch)
    conf, ours, official, acc = seg_reference(logits, target)
    assert np.array_equal(np.array(out["confusion"]), conf)
    assert conf[3, 3] == 0 and conf[:, 3].sum() > 0
    assert out["miou"] == pytest.approx(ours, rel=1e-12)
    assert out["miou_official"] == pytest.approx(official, rel=1e-12)
    assert out["miou_official"] > out["miou"]
    assert out["pixel_acc"] == pytest.approx(acc, rel=1e-12)


def test_miou_on_hand_made_confusion():
    conf = torch.tensor([[3, 1, 0], [0, 0, 2], [0, 0, 0]])
    # IoU0 = 3/4, IoU1 = 0/3, class 2: union = 2 > 0, TP = 0
    assert miou(conf) == pytest.approx((0.75 + 0 + 0) / 3 * 100)
    assert miou(conf, "drop") == pytest.approx(75.0)


def normal_reference(pred, target, mask):
    pred = upsample_np(pred, H, W)
    pn = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    tn = target / np.linalg.norm(target, axis=1, keepdims=True)
    cos = np.clip((pn * tn).sum(1), -1, 1)[mask]
    theta = np.degrees(np.arccos(cos))
    out = {
        "mean": theta.mean(),
        "median": np.median(theta),
        "rmse": np.sqrt((theta**2).mean()),
        "cos_sim": cos.mean(),
    }
    for key, t in (
        ("within_11_25", 11.25),
        ("within_22_5", 22.5),
        ("within_30", 30),
        ("within_45", 45),
    ):
        out[key] = (theta <= t).mean() * 100
    return out


@pytest.mark.parametrize("batch", [1, 2, N])
def test_normal_meter(batch):
    pred = RNG.normal(size=(N, 3, 4, 4))
    target = RNG.normal(size=(N, 3, H, W))
    mask = RNG.random((N, H, W)) > 0.3
    # pixels just inside / outside 11.25°
    for i, deg in enumerate((11.25 - 1e-6, 11.25 + 1e-6)):
        theta = math.radians(deg)
        pred[i, :, 0, 0] = [math.sin(theta), 0.0, math.cos(theta)]
        target[i, :, :4, :4] = np.array([0.0, 0.0, 1.0])[:, None, None]
        mask[i, 0, 0] = True
    out = run_meter(NormalMeter(), pred, target, mask, batch)
    ref = normal_reference(pred, target, mask)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_normal_thresholds_are_inclusive():
    meter = NormalMeter()
    meter.angles = [np.array([11.25, 22.5, 30.0, 45.0, np.nextafter(11.25, 12), 60.0])]
    out = meter.compute()
    assert out["within_11_25"] == pytest.approx(100 / 6)
    assert out["within_22_5"] == pytest.approx(300 / 6)
    assert out["within_30"] == pytest.approx(400 / 6)
    assert out["within_45"] == pytest.approx(500 / 6)


def depth_reference(pred, target, mask, explicit=False):
    """valid = mask & (t > 0), or the mask alone if `explicit`; ratios need t > 0 as well."""
    pred = upsample_np(pred, H, W)[:, 0]
    target = target[:, 0]
    abs_i, rel_i, sq_i = [], [], []
    sq, n, n_rel, hits = 0.0, 0, 0, np.zeros(3)
    for p, t, m in zip(pred, target, mask):
        v = m if explicit else m & (t > 0)
        r = v & (t > 0)
        if v.any():
            abs_i.append(np.abs(p[v] - t[v]).mean())
            sq += ((p[v] - t[v]) ** 2).sum()
            n += v.sum()
        if r.any():
            e = np.abs(p[r] - t[r])
            rel_i.append((e / t[r]).mean())
            sq_i.append((e**2 / t[r]).mean())
            n_rel += r.sum()
            pp, tt = p[r], t[r]
            ratio = np.where(pp > 0, np.maximum(pp / tt, tt / np.where(pp > 0, pp, 1)), np.inf)
            hits += [(ratio <= 1.25**i).sum() for i in (1, 2, 3)]
    return {
        "abs_err": np.mean(abs_i),
        "rel_err": np.mean(rel_i),
        "sq_rel": np.mean(sq_i),
        "rmse": np.sqrt(sq / n),
        "delta1": hits[0] / n_rel * 100,
        "delta2": hits[1] / n_rel * 100,
        "delta3": hits[2] / n_rel * 100,
    }


@pytest.mark.parametrize("batch", [1, 4, N])
def test_depth_meter_per_image_and_pooled(batch):
    target = RNG.uniform(0.5, 5, size=(N, 1, H, W))
    target[RNG.random((N, 1, H, W)) < 0.3] = 0  # invalid
    mask = RNG.random((N, H, W)) > 0.2
    mask[1, :12] = False  # very different valid counts per image
    pred = target[:, :, ::4, ::4] * RNG.uniform(0.7, 1.4, size=(N, 1, 4, 4))
    pred[:, :, 0, :2] = RNG.uniform(-1, 0, size=(N, 1, 2))  # non-positive predictions
    out = run_meter(DepthMeter(), pred, target, mask, batch)
    ref = depth_reference(pred, target, mask)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    per_image_mean = ref["abs_err"]
    pooled = np.abs(upsample_np(pred, H, W) - target)[:, 0][mask & (target[:, 0] > 0)].mean()
    assert not math.isclose(per_image_mean, pooled, rel_tol=1e-3)  # the test can tell them apart


@pytest.mark.parametrize("batch", [1, 3, N])
def test_depth_meter_explicit_mask_keeps_valid_zero_targets(batch):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 65_535, size=(N, 1, H, W))
    raw[rng.random((N, 1, H, W)) < 0.3] = 0  # valid raw depth 0 → encoded target 0
    raw[2] = 0  # an image whose valid targets are all 0: no ratios, still an abs_err
    target = np.log1p(raw) / np.log(2.0**16)  # Taskonomy encoding
    mask = raw[:, 0] < 64_500
    pred = rng.uniform(0.7, 1.0, size=(N, 1, 4, 4))
    pred[:, :, 0, 0] = -0.05  # non-positive predictions fail every δ
    out = run_meter(DepthMeter(explicit_mask=True), pred, target, mask, batch)
    ref = depth_reference(pred, target, mask, explicit=True)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    default = run_meter(DepthMeter(), pred, target, mask, batch)
    assert default == pytest.approx(depth_reference(pred, target, mask))
    assert not math.isclose(out["abs_err"], default["abs_err"], rel_tol=1e-3)


def test_depth_meter_default_mask_is_positive_target():
    target = RNG.uniform(0.5, 5, size=(2, 1, H, W))
    target[:, :, :5] = 0
    pred = RNG.uniform(0.5, 5, size=(2, 1, 4, 4))
    out = run_meter(DepthMeter(), pred, target, None, 2)
    ref = depth_reference(pred, target, np.ones((2, H, W), dtype=bool))
    assert out["abs_err"] == pytest.approx(ref["abs_err"], rel=1e-9)


@pytest.mark.parametrize("batch", [1, N])
def test_l1_and_ce_meters(batch):
    pred = RNG.normal(size=(N, 1, 4, 4))
    target = RNG.normal(size=(N, 1, H, W))
    mask = RNG.random((N, H, W)) > 0.5
    out = run_meter(L1Meter(), pred, target, mask, batch)
    up = upsample_np(pred, H, W)
    per = [np.abs(up[i, 0] - target[i, 0])[mask[i]].mean() for i in range(N)]
    assert out["abs_err"] == pytest.approx(np.mean(per), rel=1e-9)
    logits = RNG.normal(size=(N, C, 4, 4))
    labels = RNG.integers(0, C, size=(N, H, W))
    labels[RNG.random((N, H, W)) < 0.2] = 255
    weight = RNG.uniform(0.5, 2, size=C)
    out = run_meter(CEMeter(weight), logits, labels, None, batch)
    up = upsample_np(logits, H, W)
    logp = up - np.log(np.exp(up).sum(1, keepdims=True))
    per = []
    for i in range(N):
        v = labels[i] != 255
        y = labels[i][v]
        nll = -logp[i].transpose(1, 2, 0)[v][np.arange(len(y)), y]
        per.append((weight[y] * nll).sum() / weight[y].sum())
    assert out["ce_err"] == pytest.approx(np.mean(per), rel=1e-9)


def test_accuracy_meter():
    meter = AccuracyMeter()
    meter.update(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, 1]))
    assert meter.compute()["acc"] == pytest.approx(200 / 3)


def test_delta_t_by_hand():
    single = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5}}
    results = {"seg": {"miou": 44.0, "pixel_acc": 57.0}, "depth": {"abs_err": 0.4}}
    hib = {"seg": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False}}
    # seg: (+10 % − 5 %)/2 = +2.5; depth (lower is better): −(0.4 − 0.5)/0.5 = +20
    out = delta_t(results, single, hib)
    assert out["per_task"] == pytest.approx({"seg": 2.5, "depth": 20.0})
    assert out["delta_t"] == pytest.approx(11.25)
    with pytest.raises(KeyError, match="lacks metric 'rel_err' of task 'depth'"):
        delta_t(results, single, {"depth": {"rel_err": False}})
    with pytest.raises(ValueError, match="single-task depth.abs_err is 0"):
        delta_t(results, {**single, "depth": {"abs_err": 0.0}}, hib)
    assert set(DELTA_METRICS["nyu"]["normal"]) == {  # the paper's: the official-code angles
        "official_mean",
        "official_median",
        "official_within_11_25",
        "official_within_22_5",
        "official_within_30",
    }


def test_results_csv_holds_test_metrics_delta_t_params_and_flops(tmp_path):
    import csv

    from efficientdl.adashare.reporting.results import write_csv

    costs = {"params": 11e6, "backbone_units": 1, "gflops_per_task_sum": 9.0}
    table = {
        "adashare": {"test": {"seg": {"miou": 40.0}}, "delta_t": 1.5, "gflops_shared": 6.0},
        "single_task": {"test": {"seg": {"miou": 38.0}}, "delta_t": 0.0, "gflops_shared": 9.0},
    }
    write_csv(tmp_path / "results.csv", {k: v | costs for k, v in table.items()})
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    values = {(r["run"], r["task"], r["metric"]): float(r["value"]) for r in rows}
    assert len(values) == len(rows) == 12
    assert values[("adashare", "seg", "miou")] == 40.0
    assert values[("adashare", "", "gflops_shared")] == 6.0
    assert values[("single_task", "", "gflops_shared")] == 9.0
    assert values[("single_task", "", "gflops_per_task_sum")] == 9.0
    assert values[("adashare", "", "delta_t")] == 1.5 and values[("adashare", "", "params")] == 11e6


def test_official_normal_angles_on_hand_made_vectors():
    """The official code's angle is the one between the raw encodings (n + 1)/2 (× 255): for a
    target straight at the camera, a prediction 90° off is 33.56° there and an opposite one
    54.74° (closed forms below); the scale of the prediction does not matter."""
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(3, 3, 1, 1)
    pred = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -0.2], [0.0, 0.0, 5.0]]).reshape(3, 3, 1, 1)
    # (1, .5, .5)·(.5, .5, 1) = 1.25, |·|² = 1.5 each; (.5, .5, 0)·(.5, .5, 1) = 0.5 over √.5·√1.5
    want = [math.degrees(math.acos(1.25 / 1.5)), math.degrees(math.acos(0.5 / math.sqrt(0.75))), 0]
    got = official_normal_angles(pred, target)[:, 0, 0]
    assert got.tolist() == pytest.approx(want, abs=1e-9)
    assert normal_angles(pred, target)[:, 0, 0].tolist() == pytest.approx([90, 180, 0], abs=1e-9)
    meter = NormalMeter()
    meter.update(pred, target)
    out = meter.compute()
    assert out["official_mean"] == pytest.approx(np.mean(want)) and out["mean"] == pytest.approx(90)
    assert out["official_within_45"] == pytest.approx(200 / 3)
    assert out["within_45"] == pytest.approx(100 / 3)


def official_normal_metrics(sn_output: np.ndarray, normal_raw: np.ndarray) -> dict:
    """A transcription of the official `normal_error` and its aggregation in test.py /
    re-train.py: pixels with a channel of 255 dropped, both vectors normalised, cosine
    clipped, angles in degrees (in float64 here, float32 there)."""
    prediction = torch.from_numpy(sn_output).permute(0, 2, 3, 1).reshape(-1, 3)
    gt = torch.from_numpy(normal_raw).permute(0, 2, 3, 1).reshape(-1, 3)
    labels = gt.max(dim=1)[0] != 255
    gt, prediction = F.normalize(gt[labels], dim=1), F.normalize(prediction[labels], dim=1)
    cos = np.clip(torch.nn.CosineSimilarity()(gt, prediction).numpy(), -1, 1)
    angles = np.arccos(cos) / np.pi * 180.0
    out = {"mean": np.mean(angles), "median": np.median(angles)}
    for key, t in (("11_25", 11.25), ("22_5", 22.5), ("30", 30.0), ("45", 45.0)):
        out[f"within_{key}"] = np.mean(np.less_equal(angles, t)) * 100
    return out


@pytest.mark.parametrize("batch", [1, 3, N])
def test_official_normal_metrics_match_the_official_code(batch):
    """Our unit targets and predictions, scored as the official code scores its raw 0–255 ones;
    and with `encoding='official_raw'` (targets and predictions in the raw space) the same."""
    rng = np.random.default_rng(7)
    normal = rng.normal(size=(N, 3, H, W))
    normal[:, 2] = np.abs(normal[:, 2])  # facing the camera, as real normals do
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    pred = normal + rng.normal(0, 0.4, size=normal.shape)  # at the target resolution
    invalid = rng.random((N, H, W)) < 0.2
    raw = (normal + 1) / 2 * 255
    raw[:, 1][invalid] = 255  # the official invalid marker
    mask = ~invalid
    pred_raw = (pred / np.linalg.norm(pred, axis=1, keepdims=True) + 1) / 2 * 255
    ref = official_normal_metrics(pred_raw, raw)
    for encoding, p, t in (("unit", pred, normal), ("official_raw", pred_raw, raw)):
        out = run_meter(NormalMeter(encoding=encoding), p, t, mask, batch)
        for key, value in ref.items():
            assert out[f"official_{key}"] == pytest.approx(value, rel=1e-9), (encoding, key)
    assert "mean" not in out  # the raw space has no true angle for a prediction
    unit = run_meter(NormalMeter(), pred, normal, mask, batch)
    assert unit["mean"] > 1.4 * unit["official_mean"]  # the raw encoding shrinks the angles
