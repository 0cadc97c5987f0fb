#!/usr/bin/env bash
# One unattended call on a machine with an NVIDIA GPU: the CUDA equality tests (Triton kernels and
# the fused/triton backends against the torch reference, KE and core CUDA tests), then the GPU
# benchmarks of the three methods, each writing its JSON into the output folder.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only STEP,STEP] [--dry-run] [--without-gpu]
#
# Output folder: --out DIR, else $OUT, else a new folder under /tmp. It receives env.txt (python,
# torch, CUDA, triton, nvidia-smi), one log per step, the benchmarks' JSON, cuda_tests.xml and
# summary.json / summary.tsv (each step's exit status and seconds). Every step is recorded and
# the script goes on after a failure; the per-step limits below add up to 8 minutes (typically
# far less). Exit status: 0 all steps passed, 1 some step failed, 3 no CUDA device (nothing run).
#
# It uses the repository's code (PYTHONPATH=src) with $PYTHON if set, else the first of
# .venv/bin/python, python3, python that has a CUDA torch. A missing small dependency (numpy,
# pyyaml, tqdm, matplotlib, pytest, triton) is pip-installed once if a registry is reachable; if
# not, the steps that need it fail and say so. --only runs the named steps; --without-gpu runs
# them without a CUDA device (to check the script itself: the GPU steps then fail, recorded).
set -u

cd "$(dirname "$0")/.." || exit 1
DRY_RUN=0
NEED_GPU=1
ONLY=""
DEST="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --without-gpu) NEED_GPU=0 ;;
        --out) DEST="${2:?--out needs a folder}"; shift ;;
        --only) ONLY=",${2:?--only needs step names},"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$DEST" ] || DEST="$(mktemp -d /tmp/efficientdl_gpu_check.XXXXXX)"
mkdir -p "$DEST" || { echo "gpu_check: cannot create $DEST" >&2; exit 2; }
DEST="$(cd "$DEST" && pwd)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# name | time limit (s) | command ($PY and $DEST are expanded when the step runs)
STEPS=(
    "cuda_tests|150|\$PY -m pytest -q -rs -p no:cacheprovider -k 'cuda or compile' --junitxml=\$DEST/cuda_tests.xml tests/test_snn_triton.py tests/test_snn_fused.py tests/test_ke_reinit.py tests/test_core_benchmark.py"
    "snn_bench|150|\$PY -m efficientdl.cli snn bench --device cuda --warmup 3 --iters 10 --out \$DEST/snn_speed_cuda.json"
    "adashare_bench|100|\$PY -m efficientdl.cli adashare bench --device cuda --out \$DEST/adashare_speed_cuda.json"
    "ke_bench|80|\$PY benchmarks/ke_slim.py --quick --threads $(nproc 2>/dev/null || echo 4) --out \$DEST/ke_slim_cuda.json"
)

if [ -n "$ONLY" ]; then
    selected=()
    for step in "${STEPS[@]}"; do
        [[ "$ONLY" == *",${step%%|*},"* ]] && selected+=("$step")
    done
    [ "${#selected[@]}" -gt 0 ] || { echo "gpu_check: --only names no step" >&2; exit 2; }
    STEPS=("${selected[@]}")
fi

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run; output folder $DEST; steps:"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit command <<< "$step"
        echo "  $name (limit ${limit}s): $command"
    done
    exit 0
fi

# probe a Python: prints its versions and devices; exit 0 when it has torch (and, unless
# --without-gpu, a CUDA device)
PROBE='
import platform, sys
import torch
print("python", sys.executable, platform.python_version(), "torch", torch.__version__,
      "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count())
try:
    import triton
    print("triton", triton.__version__)
except Exception as err:
    print("triton: cannot import:", type(err).__name__, err)
try:
    from efficientdl.snn import fused
    print("fused kernels on cuda:", fused.implementation("cuda"), fused.available("cuda"))
except Exception as err:
    print("efficientdl: cannot import:", type(err).__name__, err)
sys.exit(0 if int(sys.argv[1]) == 0 or torch.cuda.is_available() else 1)
'

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi 2>&1 || echo "nvidia-smi: not found"
} > "$DEST/env.txt"
PY=""
for candidate in ${PYTHON:-.venv/bin/python python3 python}; do
    command -v "$candidate" > /dev/null 2>&1 || continue
    if "$candidate" -c "$PROBE" "$NEED_GPU" > "$DEST/probe.txt" 2>&1; then
        PY="$candidate"
        cat "$DEST/probe.txt" >> "$DEST/env.txt"
        break
    fi
done
rm -f "$DEST/probe.txt"
if [ -z "$PY" ]; then
    msg="no CUDA device visible to a Python with torch (tried ${PYTHON:-.venv/bin/python python3 python}): nothing to check"
    echo "gpu_check: $msg" | tee -a "$DEST/env.txt" >&2
    printf '{"cuda": false, "message": "%s", "steps": []}\n' "$msg" > "$DEST/summary.json"
    exit 3
fi

# small dependencies: install what is missing, once; go on if that fails (no registry)
missing=$("$PY" -c '
import importlib.util
wanted = {"numpy": "numpy", "yaml": "pyyaml", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "pytest": "pytest", "triton": "triton"}
print(" ".join(p for m, p in wanted.items() if importlib.util.find_spec(m) is None))
')
for package in $missing; do
    echo "gpu_check: installing missing $package" | tee -a "$DEST/env.txt"
    timeout 120 "$PY" -m pip install -q --retries 0 --timeout 10 "$package" >> "$DEST/env.txt" 2>&1 \
        || echo "gpu_check: could not install $package (steps that need it will fail)" | tee -a "$DEST/env.txt"
done
cat "$DEST/env.txt"

failed=0
: > "$DEST/summary.tsv"
json=""
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<< "$step"
    command="${command//\$PY/$PY}"
    command="${command//\$DEST/$DEST}"
    echo "gpu_check: == $name (limit ${limit}s): $command"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$command" > "$DEST/$name.log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - start ))
    tail -n 25 "$DEST/$name.log"
    [ "$rc" = 0 ] || failed=1
    [ "$rc" = 124 ] && echo "gpu_check: $name ran past ${limit}s"
    echo "gpu_check: $name exit $rc after ${seconds}s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$seconds" >> "$DEST/summary.tsv"
    json="$json${json:+, }{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $seconds, \"log\": \"$name.log\"}"
done
cuda=$([ "$NEED_GPU" = 1 ] && echo true || echo false)
printf '{"cuda": %s, "python": "%s", "steps": [%s]}\n' "$cuda" "$PY" "$json" > "$DEST/summary.json"
echo "gpu_check: results in $DEST"
cat "$DEST/summary.tsv"
exit "$failed"
