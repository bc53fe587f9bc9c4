#!/usr/bin/env bash
# Runs on the device machine (one call: steps capped at 80 + 180 + 130 + 170 s, so with the
# install it ends inside timeout_s=590; prepare with benchmarks/gpu_prepare.sh). STEPS picks a
# subset for a rerun, e.g. STEPS="pretrain nuclei-wsi" bash benchmarks/gpu_check.sh:
# GPU numbers of stain augmentation (bench_augment), pretraining (bench_pretrain), nuclei head
# training on CUDA (bf16) and WSI nuclei inference (bench_nuclei). Logs and JSON land in $OUT.
set -u -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PATHSSL_DATA=$PWD/.gpudata
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/.gpudata" ../shared/data; }
STEPS=${STEPS:-augment pretrain nuclei-train nuclei-wsi}
step() {
  case " $STEPS " in *" $1 "*) ;; *) echo "== $1 (skipped)"; return 0;; esac
  echo "== $1"; shift; "$@" 2>&1 | grep -v -e FutureWarning -e remove_small_objects
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchvision, monai, zarr, albumentations, openslide, pathssl, tiling; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/env.txt"
step augment timeout 80 python3 benchmarks/bench_augment.py --seconds 1 --json "$OUT/augment.json" \
  | tee "$OUT/augment.txt"
step pretrain timeout 180 python3 benchmarks/bench_pretrain.py --steps 20 --warmup 5 \
  --out "$OUT/pretrain.json" \
  | tee "$OUT/pretrain.txt"
N=$PATHSSL_DATA/nuclei
step nuclei-train timeout 130 python3 -m pathssl.cli nuclei train configs/nuclei/hgsc_resnet18_cpu.yaml \
  "data.image=$N/hgsc_nest.jpg" "data.inst=$N/hgsc_nest_inst_mask.npz" \
  "data.types=$N/hgsc_nest_type_mask.npz" train.device=cuda train.max_steps=300 data.batch_size=16 \
  data.crop=256 train.out_dir=runs/gpu_nuclei --no-progress | tee "$OUT/nuclei_train.txt"
CKPT=runs/gpu_nuclei/nuclei.pt  # the head trained above; without it an untrained one (speed only)
[ -f "$CKPT" ] && CK=(--checkpoint "$CKPT") || CK=()
step nuclei-wsi timeout 170 python3 benchmarks/bench_nuclei.py --device cuda --sizes 2048 4096 \
  --batch-size 32 "${CK[@]}" --json "$OUT/nuclei.json" \
  | tee "$OUT/nuclei_wsi.txt"
