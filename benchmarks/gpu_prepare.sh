#!/usr/bin/env bash
# Prepare the one device call that measures the GPU numbers of the augmentation, pretraining and
# nuclei issues (run here, on the dev machine, from the repository root):
#   .whl/      wheels of the dependencies the device image lacks (same versions as .venv)
#   .gpudata/  a copy of the real data the GPU benchmarks read (never committed: git-ignored)
# Then, with the device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpudata"],
#                                  timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${PATHSSL_DATA:-../shared/data}
pkgs=(albucore albumentations annotated-types donfig google-crc32c imagecodecs monai numcodecs
      openslide-bin openslide-python pydantic pydantic_core simsimd stringzilla typing-inspection zarr)
pins=()
for p in "${pkgs[@]}"; do
  v=$($PY -m pip show "$p" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$v" ] || { echo "$p is not installed in .venv: run make venv first" >&2; exit 1; }
  pins+=("$p==$v")
done
rm -rf .whl .gpudata
platforms=()
for n in 1 2014 2_17 2_24 2_27 2_28 2_31 2_34; do
  case $n in 1|2014) platforms+=(--platform "manylinux${n}_x86_64");; *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
# only what gpu_check.sh reads (the device call carries at most 64 MiB with the wheels)
mkdir -p .gpudata/tiles .gpudata/nuclei
cp -r "$DATA/slides" .gpudata/
cp "$DATA"/nuclei/hgsc_nest* .gpudata/nuclei/
cp -r "$DATA/tiles/stain" .gpudata/tiles/
du -sh .whl .gpudata
