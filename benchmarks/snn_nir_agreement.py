"""Cross-simulator agreement: a trained TSSL-BP network exported to NIR and run in snnTorch and
Norse through their own NIR importers, on the MNIST test images.

    efficientdl snn train --config snn/demo --run-dir runs/nir_demo
    python benchmarks/snn_nir_agreement.py runs/nir_demo [--limit N] [--out FILE.json]

Prints, per simulator, the fraction of test images whose predicted class agrees with
efficientdl's, both accuracies, and per spiking layer the Pearson correlation of the spike counts
(per image and neuron) and how many counts differ; writes the same as JSON. A last row runs Norse
with a subtractive reset (v − V_th instead of 0), to show how much the reset rule matters.
Everything runs in float32 on the CPU (as the simulators do by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from efficientdl.core.registry import get
from efficientdl.snn.nir_sim import SIMULATORS, compare
from efficientdl.snn.train import eval_indices, load_run


def batches(test_set, indices, batch_size):
    """(images, labels) of `test_set[indices]` in batches."""
    for start in range(0, len(indices), batch_size):
        items = [test_set[int(i)] for i in indices[start : start + batch_size]]
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/snn_nir_agreement.json"))
    args = parser.parse_args()
    recipe, net, (_, test_set) = load_run(args.run_dir)
    indices = eval_indices(recipe, test_set)[: args.limit]
    shape = get("snn", recipe.model).input_shape
    runs = [(simulator, False) for simulator in SIMULATORS] + [("norse", True)]
    results = []
    for simulator, soft_reset in runs:
        start = time.perf_counter()
        data = batches(test_set, indices, args.batch_size)
        r = compare(net, shape, data, simulator, soft_reset=soft_reset)
        r["seconds"] = time.perf_counter() - start
        results.append(r)
    print(
        f"{recipe.model} from {args.run_dir}: {len(indices)} {recipe.dataset} test images, "
        f"T={net.T}"
    )
    names = list(results[0]["layers"])
    print(
        "| simulator | dt | reset | agree % | acc ours % | acc simulator % | "
        + " | ".join(f"{name}: corr, differing counts" for name in names)
        + " |"
    )
    print("|---" * (6 + len(names)) + "|")
    for r in results:
        cells = [
            f"{v['spike_count_correlation']:.6f}, {v['differing_counts']} of {v['counts']}"
            for v in r["layers"].values()
        ]
        print(
            f"| {r['simulator']} | {r['dt']:g} | {r['reset']} | "
            f"{100 * r['prediction_agreement']:.2f} | {100 * r['accuracy_ours']:.2f} | "
            f"{100 * r['accuracy_simulator']:.2f} | " + " | ".join(cells) + " |"
        )
    versions = {}
    for name in ("torch", "nir", "nirtorch", "snntorch", "norse"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as err:  # a version string is informative only
            versions[name] = f"unavailable ({type(err).__name__})"
    payload = {
        "run_dir": str(args.run_dir),
        "model": recipe.model,
        "dataset": recipe.dataset,
        "T": net.T,
        "test_images": len(indices),
        "dtype": "float32",
        "versions": versions,
        "machine": platform.platform(),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
