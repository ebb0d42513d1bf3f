#!/usr/bin/env bash
# GPU figures in one command (docs/benchmarks.md, "GPU figures in one command"):
#
#   bash benchmarks/gpu_run.sh OUTDIR             on the GPU machine: ≤ 7 minutes on an H100 (GPU_RUN_BUDGET s)
#   bash benchmarks/gpu_run.sh --dry-run OUTDIR   the same steps on CPU with the tiny model, in about a minute
#
# Installs what the GPU machine lacks from the carried wheel folder .whl/ (benchmarks/gpu_wheels.sh builds it)
# into a temporary folder, then runs the steps below, most important first, each under `timeout` and within
# the run's budget, so that a step that hangs or a run cut short still leaves the earlier steps' files:
#   check      the engine and the whole-slide CLI import without napari/Qt; versions → env.json
#   model      full-size SD1.5 + ControlNet architecture, random weights (tiny model in a dry run)
#   bench      (a) diffusers pipeline fp16 batch 1 vs (b) engine exact fp16 batch 1/4/8/auto, (c) fast modes
#   floor      bf16 matmul rate and the FLOPs of one exact tile: the floor in s/tile
#   autobatch  the batch auto chooses, its peak memory, a forced out-of-memory that halves and recovers
#   e2e        napari-crafts generate on 4096² px of labels: tiles/s of the whole path
#   variants   bf16, default and channels_last, batch 8
#   compile    torch.compile, batch 8 (GPU only: on CPU compiling alone takes minutes)
# OUTDIR gets three files (the device hands back at most 8): after each step, results.json (the summary, each
# step's exit code and seconds (124: timed out) and every finished step's full JSON) and rows.md (rows to paste
# into docs/benchmarks.md); log.txt holds everything printed. The step files themselves stay in a temporary
# folder.
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: bash benchmarks/gpu_run.sh [--dry-run] OUTDIR" >&2
  exit 2
fi
out=$1
if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
  echo "gpu_run: $out exists and is not an empty folder: give a new or empty folder." >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
budget=${GPU_RUN_BUDGET:-$([ $dry = 1 ] && echo 300 || echo 420)}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT  # the temporary folder is ours: models, labels, the whole-slide output
stepdir=$work/steps
mkdir -p "$stepdir"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
printf '{"dry_run": %s, "started": "%s", "budget_s": %s}\n' "$([ $dry = 1 ] && echo true || echo false)" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$budget" > "$stepdir/run.json"

if [ $dry = 1 ]; then
  # CPU: one torch thread (two threads on a shared machine wait on each other), tiny model, few small tiles
  export OMP_NUM_THREADS=1
  model_kind=tiny tile=64 overlap=8 steps=2 side=128 bench_tiles=2 batches="1 2 0" big=2 mm=256
else
  model_kind=full tile=512 overlap=64 steps=50 side=4096 bench_tiles=8 batches="1 4 8 0" big=8 mm=8192
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== install: $(ls .whl/*.whl | wc -l) wheels from .whl/"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl \
      || { echo "gpu_run: installing the wheels of .whl/ failed (see above)"; exit 1; }
    export PYTHONPATH="$work/site:$PYTHONPATH"
  else
    echo "gpu_run: no .whl/*.whl: carry .whl (bash benchmarks/gpu_wheels.sh builds it) unless this python has them"
  fi
fi

# step NAME LIMIT_S COMMAND...: run under timeout, within what is left of the budget; record; update the report.
# GPU_RUN_ONLY="e2e variants" (a rerun with the time left) runs those steps and the ones they need.
step() {
  local name=$1 limit=$2 left t0 rc
  shift 2
  case " check model labels ${GPU_RUN_ONLY:-$name} " in
    *" $name "*) ;;
    *) echo "== $name: not in GPU_RUN_ONLY"; return 0 ;;
  esac
  left=$((budget - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped, ${left} s of the budget left"
    printf '%s\t%s\t%s\n' "$name" 125 0 >> "$stepdir/steps.tsv"
    return 125
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s, $((SECONDS)) s into the run)"
  t0=$SECONDS
  timeout -k 10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$stepdir/steps.tsv"
  [ $rc = 124 ] && echo "== $name: timed out after ${limit} s"
  "$py" benchmarks/gpu_run.py report "$stepdir" "$out" > /dev/null || echo "gpu_run: report failed"
  return $rc
}

bench=("$py" benchmarks/bench_engine.py --tiles "$bench_tiles" --steps "$steps" --tile-size "$tile")
if [ $model_kind = full ]; then bench+=(--model full --model-dir "$work/model"); else bench+=(--model tiny --threads 1); fi
gpu_run=("$py" benchmarks/gpu_run.py)

step check 60 "$py" - "$stepdir/env.json" <<'EOF' || exit 1
import json, platform, sys
import torch, diffusers, transformers, zarr, dask, distributed
import napari_crafts.model.engine, napari_crafts.wsi.job, napari_crafts.cli.generate  # noqa: F401
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel  # noqa
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401  (diffusers' lazy imports resolved here, not later)
qt = sorted(m for m in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui") if m in sys.modules)
assert not qt, f"the engine and the whole-slide CLI imported {qt}"
env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
       "transformers": transformers.__version__, "zarr": zarr.__version__, "dask": dask.__version__,
       "cuda": torch.cuda.is_available(),
       "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"}
open(sys.argv[1], "w").write(json.dumps(env, indent=2))
print(env)
EOF
step model 150 "${gpu_run[@]}" model "$model_kind" "$work/model" || exit 1
step bench 200 "${bench[@]}" --batch $batches --approx unipc reuse3 fast --json "$stepdir/bench_fp16.json"
step floor 60 "${gpu_run[@]}" floor "$stepdir/floor.json" --n "$mm" --tile "$tile"
step autobatch 90 "${gpu_run[@]}" autobatch "$work/model" "$stepdir/autobatch.json" --tile-size "$tile"
step labels 30 "${gpu_run[@]}" labels "$side" "$work/labels.tif" \
  && step e2e 200 "${gpu_run[@]}" e2e "$work/model" "$work/labels.tif" "$stepdir/e2e.json" --workdir "$work" \
    --steps "$steps" --tile-size "$tile" --overlap "$overlap" --batch 0
step variants 120 "${bench[@]}" --dtype bf16 --modes default channels_last --batch "$big" --approx \
  --json "$stepdir/bench_variants.json"
if [ $dry = 0 ]; then
  step compile 300 "${bench[@]}" --modes compile --batch "$big" --approx --json "$stepdir/bench_compile.json"
fi
echo "== done in ${SECONDS} s"
cat "$out/rows.md"
