#!/usr/bin/env bash
# The CUDA check of issue 17 (item 4), one prepared script for a machine with a GPU.
#
#   bash benchmarks/gpu_check.sh             # on a CUDA machine: every section below
#   bash benchmarks/gpu_check.sh --prepare   # here, once: the wheels the GPU image lacks
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # the same sections on CPU, tiny sizes
#
# Without a CUDA GPU it prints the static device-comparison list and "no CUDA GPU" and exits 0.
# Sections, each under its own time guard and all under GPU_CHECK_BUDGET seconds (default 420,
# 7 min), so a slow or failing one does not eat the rest; GPU_CHECK_ONLY="install tests" runs
# only the sections named (install is needed by every later one on a fresh machine):
#   info        nvidia-smi, torch/CUDA facts
#   install     the project and its missing dependencies from build/gpu-wheels (no network)
#   devices     where ebm_cli compares devices (static), and what cuda vs cuda:0 does (probe)
#   samplers    every configs/sampler/*.yaml on a CUDA Gaussian target, checked against truth
#   throughput  HMC/MALA, D = 2 and 100, 1k..1M chains: eager, compiled, CUDA graphs
#   default     ebm-train device=cuda   (the default run)
#   tests       the test suite (its CLI runs use device=auto, i.e. cuda there)
#   digits      ebm-train device=cuda experiment=digits
# Results go to $OUT (set by the device tool; default ./gpu_results), at most 8 files:
# gpu_check.log (everything), summary.md, probe.txt, samplers.md, throughput.md/.json,
# tests.log, runs.log.
#
# With the device tool (carry the wheels; the venv does not travel), leaving time for a rerun:
#   run(command="bash benchmarks/gpu_check.sh", carry=["build/gpu-wheels"], timeout_s=480)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/build/gpu-wheels

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x .venv/bin/python ]]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}
PY=$(pick_python)

if [[ "${1:-}" == "--prepare" ]]; then
  # Pure-Python wheels of the dependencies the GPU image lacks (it has torch, numpy, scipy,
  # scikit-learn, matplotlib, tensorboard, rich, pytest, pytest-xdist), at this venv's
  # versions, plus setuptools (>= 70 builds wheels by itself) to build the project there.
  mkdir -p "$WHEELS"
  pins=$("$PY" - <<'EOF'
from importlib import metadata
names = ["hydra-core", "omegaconf", "arviz-stats", "hydra-joblib-launcher",
         "hydra-submitit-launcher", "submitit"]
print(" ".join(f"{n}=={metadata.version(n)}" for n in names), "setuptools>=70")
EOF
) || exit 1
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" $pins || exit 1
  antlr=$("$PY" -c "from importlib import metadata; print(metadata.version('antlr4-python3-runtime'))")
  "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "antlr4-python3-runtime==$antlr" || exit 1  # sdist only
  ls -l "$WHEELS"
  du -sh "$WHEELS"
  echo "ready: run(command=\"bash benchmarks/gpu_check.sh\", carry=[\"build/gpu-wheels\"], timeout_s=480)"
  exit 0
fi

DRY=${GPU_CHECK_DRY_RUN:-0}
GPU_CHECK_FORCE_INSTALL=${GPU_CHECK_FORCE_INSTALL:-0}  # 1: install even if importable (a trial)
OUT=${OUT:-$ROOT/gpu_results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-420}
ONLY=${GPU_CHECK_ONLY:-}  # e.g. "install throughput": only these sections (a rerun)
START=$SECONDS
: >"$OUT/gpu_check.log"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
SUMMARY=$OUT/summary.md
export PYTHONUNBUFFERED=1

static_device_comparisons() {
  # Explicit device comparisons in the package: with a generator made from torch.device("cuda")
  # (build.resolve_device gives no index) against a tensor's device (cuda:0), == is False.
  echo "=== devices: places in ebm_cli that compare devices (static) ==="
  grep -rnE '\.device *(==|!=)|(==|!=) *[A-Za-z_.]*\.device\b|device *(==|!=) *[A-Za-z_.]*device' \
    --include='*.py' ebm_cli || echo "(none)"
  echo "--- places that take a device from a generator (generator.device; 'cuda', no index) ---"
  grep -rn 'generator\.device' --include='*.py' ebm_cli || echo "(none)"
}

if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu
  echo "GPU_CHECK_DRY_RUN=1: every section on CPU at tiny sizes (a trial of this script)"
else
  DEVICE=cuda
  if ! command -v nvidia-smi >/dev/null 2>&1 || \
      ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
  then
    static_device_comparisons
    echo "no CUDA GPU here (nvidia-smi or torch.cuda.is_available() missing): GPU sections skipped"
    printf '# GPU check %s\n\nno CUDA GPU on this machine: nothing measured\n' "$(date -u +%F)" \
      >"$SUMMARY"
    exit 0
  fi
fi

SECTIONS=$(mktemp)  # the section table, outside $OUT (at most 8 files come back)
printf '# GPU check, %s\n\n| section | status | seconds |\n|---|---|---:|\n' \
  "$(date -u '+%F %H:%M UTC')" >"$SECTIONS"
FAILED=0
render_summary() {
  {
    cat "$SECTIONS"
    for f in probe.txt samplers.md throughput.md; do
      [[ -s "$OUT/$f" ]] && printf '\n## %s\n\n```\n%s\n```\n' "$f" "$(cat "$OUT/$f")"
    done
    if [[ -s "$OUT/tests.log" ]]; then
      printf '\n## tests (last lines)\n\n```\n%s\n```\n' "$(tail -n 25 "$OUT/tests.log")"
    fi
    if [[ -s "$OUT/runs.log" ]]; then
      printf '\n## runs (metrics)\n\n```\n%s\n```\n' \
        "$(grep -E '^(=== |wall |exit )|"(kl|mmd|test_nll|train_seconds|acceptance_rate|ais_log_z)"' "$OUT/runs.log")"
    fi
  } >"$SUMMARY"
}

section() {  # section NAME MAX_SECONDS FUNCTION: FUNCTION under min(MAX, what is left) seconds
  local name=$1 max=$2 fn=$3
  if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then return 0; fi
  local left=$((BUDGET - (SECONDS - START)))
  local t=$((max < left ? max : left))
  if ((t < 15)); then
    echo "=== $name: skipped, ${left}s of the budget left ==="
    echo "| $name | skipped (time budget) | 0 |" >>"$SECTIONS"
    render_summary
    return 0
  fi
  echo "=== $name (guard ${t}s, $((SECONDS - START))s elapsed) ==="
  local t0=$SECONDS rc=0
  SECTION_SECONDS=$t timeout --kill-after=15 "$t" bash -c "$fn" || rc=$?
  local status=ok
  if ((rc == 124 || rc == 137)); then status="TIMEOUT after ${t}s"; FAILED=1
  elif ((rc != 0)); then status="FAILED (exit $rc)"; FAILED=1; fi
  echo "=== $name: $status in $((SECONDS - t0))s ==="
  echo "| $name | $status | $((SECONDS - t0)) |" >>"$SECTIONS"
  render_summary
}

# ---- the sections (bash -c bodies: they see the exported variables) ---------------------
export ROOT OUT PY DEVICE DRY WHEELS GPU_CHECK_FORCE_INSTALL
export -f static_device_comparisons

info() {
  date -u
  nvidia-smi || echo "(no nvidia-smi)"
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
    print("cudnn", torch.backends.cudnn.version())
EOF
}

install() {
  # The GPU image has torch but not Hydra & co.; nothing can be downloaded there.
  if [[ "${GPU_CHECK_FORCE_INSTALL:-0}" != 1 ]] && \
      "$PY" -c "import hydra, omegaconf, arviz_stats, ebm_cli.configs" 2>/dev/null; then
    echo "the project is importable as installed; nothing to install"
    exit 0
  fi
  [[ -d "$WHEELS" ]] || { echo "no $WHEELS: run 'bash benchmarks/gpu_check.sh --prepare' here and carry build/gpu-wheels"; exit 1; }
  # setuptools into a folder of its own (only to build), the rest and the project in one call
  # (a second pip --target call would not add the ebm-train script to an existing bin/)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/build-tools \
    "$WHEELS"/setuptools-*.whl || exit 1
  mapfile -t wheels < <(ls "$WHEELS"/*.whl | grep -v '/setuptools-')
  PYTHONPATH=/tmp/build-tools "$PY" -m pip install -q --no-index --no-build-isolation \
    --no-deps --no-compile --target /tmp/site "${wheels[@]}" "$ROOT" || exit 1
  rm -rf "$ROOT/build/lib" "$ROOT/build/bdist."*  # setuptools' in-tree build folders
  PYTHONPATH=/tmp/site "$PY" -c "import ebm_cli.configs, hydra, arviz_stats; print('installed into /tmp/site')"
}

devices() {
  static_device_comparisons
  echo "=== devices: probe ==="
  "$PY" benchmarks/bench_gpu.py probe --device "$DEVICE" --out "$OUT"
}

samplers() {
  "$PY" benchmarks/bench_gpu.py samplers --device "$DEVICE" --out "$OUT" \
    --budget $((SECTION_SECONDS - 15))
}

throughput() {
  if [[ "$DRY" == 1 ]]; then
    extra=(--dims 2 --chains 256 1024 --samplers mala --modes eager compiled)
  else
    extra=()
  fi
  "$PY" benchmarks/bench_gpu.py throughput --device "$DEVICE" --out "$OUT" \
    --budget $((SECTION_SECONDS - 25)) "${extra[@]}"
}

one_run() {  # one_run NAME ARGS...: ebm-train in a scratch directory, its metrics to runs.log
  local name=$1; shift
  local dir
  dir=$(mktemp -d)
  local t0=$SECONDS rc=0
  {
    echo "=== $name: ebm-train $* ==="
    (cd "$dir" && ebm-train "hydra.run.dir=$dir/run" "$@") || rc=$?
    echo "wall $((SECONDS - t0)) s"
    echo "exit $rc"
    [[ -f "$dir/run/metrics.json" ]] && cat "$dir/run/metrics.json"
    echo
  } 2>&1 | tee -a "$OUT/runs.log"
  return "$rc"
}
export -f one_run

default_run() {
  if [[ "$DRY" == 1 ]]; then one_run default device=cpu debug=fast
  else one_run default device=cuda; fi
}

digits_run() {
  if [[ "$DRY" == 1 ]]; then one_run digits device=cpu experiment=digits debug=fast
  else one_run digits device=cuda experiment=digits; fi
}

tests() {
  # Unit tests build their tensors on the default device (CPU); the CLI tests run ebm-train
  # with device=auto, which is cuda on this machine. EBM_TEST_DEVICE is for a conftest that
  # reads it (not there yet): unit tests on that device, the CLI runs with device=that.
  if [[ "$DRY" == 1 ]]; then set -- tests/test_integrators.py -n 0
  else set -- -n 12 --dist loadfile; fi
  EBM_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -rfE -p no:cacheprovider "$@" 2>&1 \
    | tee "$OUT/tests.log"
  return "${PIPESTATUS[0]}"
}

export -f info install devices samplers throughput default_run digits_run tests
if [[ "$DRY" == 1 ]]; then
  PATH=$(dirname "$PY"):$PATH  # the venv's ebm-train
else
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # where install puts the project
  PATH=/tmp/site/bin:$PATH
fi
export PATH

section info 30 info
section install 90 install
section devices 60 devices
section samplers 60 samplers
section throughput 150 throughput
section default 100 default_run
section tests 150 tests
section digits 180 digits_run

echo "total $((SECONDS - START)) s; summary in $SUMMARY"
render_summary
rm -f "$SECTIONS"
exit "$FAILED"
