#!/usr/bin/env bash
# Build the wheel folder .whl/ that benchmarks/gpu_run.sh installs on the GPU machine (docs/benchmarks.md,
# "GPU figures in one command"). That machine (Python 3.12, x86-64, no network) has torch, transformers,
# accelerate, huggingface_hub, safetensors, numpy, scipy, scikit-image, tifffile, psutil, pillow, tqdm; it lacks
# diffusers and the whole-slide path's zarr/dask/distributed and their own needs, listed here at the versions
# of constraints-ci.txt (or, for packages it does not pin, those this project's CI installs together with them).
#
#   bash benchmarks/gpu_wheels.sh            download the wheels into .whl/ (git-ignored; refuses a non-empty .whl/)
#   bash benchmarks/gpu_wheels.sh --check    install them for *this* Python into a temporary folder (the binary
#                                            ones re-downloaded for it) and import the engine and the whole-slide
#                                            CLI with every package of the list hidden outside that folder
#
# Not carried (the benchmark does not import them): napari/Qt, tiffslide and imagecodecs (SVS/NDPI input;
# the benchmark's labels are a plain TIFF), bokeh (the dask dashboard), ome-zarr.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

pin() {  # NAME: NAME==VERSION from constraints-ci.txt
  local v
  v=$(grep -i "^$1==" constraints-ci.txt | head -1 | cut -d= -f3)
  [ -n "$v" ] || { echo "gpu_wheels: $1 is not pinned in constraints-ci.txt" >&2; exit 2; }
  echo "$1==$v"
}
# name==version, one per package: the GPU machine's missing ones (check there: python3 -m pip show NAME)
wheels=(
  "$(pin diffusers)" importlib_metadata==10.2.0 zipp==4.1.2
  "$(pin zarr)" numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  "$(pin dask)" "$(pin distributed)" partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1
  cloudpickle==3.1.3 "$(pin tifffile)"
)
# top-level modules of those packages (hidden outside the temporary folder by --check)
modules="diffusers importlib_metadata zipp zarr numcodecs donfig google_crc32c dask distributed partd locket tblib zict
tornado cloudpickle tifffile"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

download() {  # DEST PYTHON_VERSION
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$2" --implementation cp \
    "${platforms[@]}" -d "$1" "${wheels[@]}"
}

if [ "${1:-}" != "--check" ]; then
  if [ -e .whl ] && [ -n "$(ls -A .whl)" ]; then
    echo "gpu_wheels: .whl/ is not empty: move it away (it is git-ignored) and run this again." >&2
    exit 2
  fi
  mkdir -p .whl
  download .whl 3.12
  ls -l .whl
  echo "gpu_wheels: $(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (the device call carries at most 64 MiB)"
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_wheels.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
here=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
download "$tmp/whl" "$here"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$tmp/site" "$tmp"/whl/*.whl
mkdir -p "$tmp/hide"
cat > "$tmp/hide/sitecustomize.py" <<EOF
# Hide the listed packages everywhere but the wheel folder's install, as on the GPU machine.
import importlib.machinery, sys
HIDDEN = set("""$modules""".split())
SITE = "$tmp/site"
class _Hide:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if "." in name or name not in HIDDEN:  # submodules: found through their parent, already from SITE
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [SITE])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} in the wheel folder", name=name)
        return spec
    @staticmethod
    def invalidate_caches():
        pass
sys.meta_path.insert(0, _Hide)
EOF
PYTHONPATH="$tmp/hide:$tmp/site:$PWD/src" "$py" - <<'EOF'
import sys
import diffusers, zarr, dask, distributed  # noqa: F401
import napari_crafts.model.engine, napari_crafts.wsi.job, napari_crafts.cli.generate  # noqa: F401
from napari_crafts.cli import build_parser
build_parser()
bad = [m for m in ("diffusers", "zarr", "dask", "distributed") if "/gpu_wheels." not in sys.modules[m].__file__]
assert not bad, f"imported from outside the wheel folder: {bad}"
qt = [m for m in ("napari", "qtpy", "PyQt5", "PyQt6", "magicgui") if m in sys.modules]
assert not qt, f"imported Qt/napari: {qt}"
print("gpu_wheels: the engine and the whole-slide CLI import from the wheels alone (diffusers",
      diffusers.__version__, "| zarr", zarr.__version__, "| dask", dask.__version__, ")")
EOF
# and run napari-crafts generate on 128² px of labels with the tiny model (its dask worker sees the same)
export PYTHONPATH="$tmp/hide:$tmp/site:$PWD/src" OMP_NUM_THREADS=1
"$py" benchmarks/gpu_run.py model tiny "$tmp/model" > /dev/null 2>&1
"$py" benchmarks/gpu_run.py labels 128 "$tmp/labels.tif" > /dev/null
"$py" benchmarks/gpu_run.py e2e "$tmp/model" "$tmp/labels.tif" "$tmp/e2e.json" --workdir "$tmp" --steps 1 \
  --tile-size 64 --overlap 8 | grep "^rc "
echo "gpu_wheels: check passed"
