#!/usr/bin/env bash
# `make docker-test`: build the image on the local Debian base and run pathssl inside it the way a
# user does (non-root --user uid:gid, data mounted read-only, an output folder mounted writable),
# then check the outputs on the host. CPU only; a few minutes after the first build.
#
# Environment (all optional):
#   DATA        sample data folder (default ../shared/data), mounted read-only at /data/in
#   IMAGE       tag to build (default pathssl:test)
#   BASE        base image (default pathssl-base:bookworm, made by docker/make_base.sh if missing)
#   RUN_AS      uid:gid for docker run --user (default: yours; 2345:2345 when run as root)
#   OUT         host output folder (default: a new /tmp/pathssl-docker-test.XXXXXX, removed with
#               its logs after a pass unless KEEP=1; kept after a failure)
#   HOST_PATHSSL  pathssl on the host for `pathssl tile --verify` (default .venv/bin/pathssl)
#   CA_BUNDLE   a CA bundle whose certificates beyond the distribution's own are passed to the
#               build as EXTRA_CA_CERTS (a TLS-intercepting proxy; default $PIP_CERT, if set)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="$(cd "${DATA:-../shared/data}" && pwd)"
IMAGE="${IMAGE:-pathssl:test}"
BASE="${BASE:-pathssl-base:bookworm}"
HOST_PATHSSL="${HOST_PATHSSL:-.venv/bin/pathssl}"
if [ -z "${RUN_AS:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then RUN_AS=2345:2345; else RUN_AS="$(id -u):$(id -g)"; fi
fi
uid="${RUN_AS%%:*}"
gid="${RUN_AS##*:}"
[ "$uid" != 0 ] || { echo "docker-test: error: RUN_AS must not be root" >&2; exit 2; }

fail() {
    echo "docker-test: FAIL: $*" >&2
    exit 1
}
docker info > /dev/null 2>&1 || {
    echo "docker-test: error: no Docker daemon; start dockerd (as root: dockerd > /tmp/dockerd.log 2>&1 &)" >&2
    exit 2
}

# Certificates of a CA bundle that the distribution does not ship (a proxy's own CA), as PEM.
extra_ca_certs() {
    python3 - "$1" << 'EOF'
import glob, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
known = {"".join(c.split()) for f in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True)
         for c in pem.findall(open(f).read())}
print("\n".join(c for c in pem.findall(open(sys.argv[1]).read()) if "".join(c.split()) not in known))
EOF
}

# 1. Base and image.
[ "$BASE" != "pathssl-base:bookworm" ] || docker/make_base.sh "$BASE"
build_args=(--build-arg "BASE=$BASE")
ca_bundle="${CA_BUNDLE:-${PIP_CERT:-}}"
if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
    extra="$(extra_ca_certs "$ca_bundle")"
    if [ -n "$extra" ]; then
        echo "docker-test: passing $(grep -c BEGIN <<< "$extra") extra CA certificate(s) from $ca_bundle to the build stages"
        build_args+=(--build-arg "EXTRA_CA_CERTS=$extra")
    fi
fi
t0=$(date +%s)
docker build -f docker/Dockerfile "${build_args[@]}" -t "$IMAGE" . > /tmp/pathssl-docker-build.log 2>&1 || {
    tail -30 /tmp/pathssl-docker-build.log >&2
    fail "docker build (log: /tmp/pathssl-docker-build.log)"
}
build_s=$(($(date +%s) - t0))
size_mb=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
echo "docker-test: built $IMAGE on $BASE in ${build_s} s (cached layers count as done), ${size_mb} MB"

# What must not be in the final image.
docker run --rm --entrypoint sh "$IMAGE" -c '
    for t in gcc cc make pytest ruff mypy; do command -v $t && exit 1; done
    test ! -e /opt/pathssl/tests && test ! -e /src && test -z "$(ls /var/lib/apt/lists)" &&
    test ! -d /root/.cache/pip && test ! -e /usr/local/share/ca-certificates/build-extra.crt' \
    > /dev/null || fail "the final image holds build tools, tests, sources, caches or the build CA"
if [ -n "${extra:-}" ]; then
    probe="$(sed -n 2p <<< "$extra")"   # a line of the first certificate's body
    ! docker run --rm --entrypoint cat "$IMAGE" /etc/ssl/certs/ca-certificates.crt | grep -qF -- "$probe" ||
        fail "the build CA is in the final image's CA bundle"
    ! docker history --no-trunc "$IMAGE" | grep -q "BEGIN CERTIFICATE" ||
        fail "the build CA is in the final image's history"
fi
echo "docker-test: final image holds no compiler, make, test tools, tests, sources, apt lists, pip cache or build CA"

# 2. Runs, as $RUN_AS, with the data read-only and $OUT writable.
made_out=""
[ -n "${OUT:-}" ] || { OUT="$(mktemp -d /tmp/pathssl-docker-test.XXXXXX)"; made_out=1; }
mkdir -p "$OUT"
[ "$(id -u)" -ne 0 ] || chown "$uid:$gid" "$OUT"
logs="$OUT.logs"
mkdir -p "$logs"
results=()

# step NAME EXPECTED_EXIT_CODE DOCKER_RUN_ARGS...: run, time, record; the log is in $logs/NAME.log.
step() {
    local name="$1" want="$2" t rc
    shift 2
    t=$(date +%s.%N)
    set +e
    docker run --rm --user "$RUN_AS" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    set -e
    t=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    results+=("$(printf '%-24s exit %s in %6s s  %s' "$name" "$rc" "$t" "$(grep -v '^[[:space:]]*$' "$logs/$name.log" | tail -1 | cut -c1-110)")")
    echo "docker-test: ${results[-1]}"
    [ "$rc" = "$want" ] || fail "$name exited $rc, expected $want (log: $logs/$name.log)"
}
mounts=(-v "$DATA:/data/in:ro" -v "$OUT:/data/out")

step version 0 "$IMAGE" --version
grep -qx "pathssl [0-9].*" "$logs/version.log" || fail "pathssl --version printed: $(cat "$logs/version.log")"
# A uid without an /etc/passwd entry: getpass works (MONAI, torch ask) and HOME is writable.
step uid-env 0 --entrypoint python "$IMAGE" -c \
    "import getpass, os, pathlib; p = pathlib.Path.home() / '.triton'; p.mkdir(); print(os.getuid(), getpass.getuser(), p)"

# The sample folder holds a broken slide and one without a resolution: exit 1, the rest is done.
step tile 1 "${mounts[@]}" "$IMAGE" tile /data/in/slides --out /data/out/tiles --workers 2 --no-progress
grep -q '^/data/in/slides/CMU-1-Small-Region.svs,ok,[1-9]' "$OUT/tiles/manifest.csv" ||
    fail "CMU-1-Small-Region not tiled: $(cat "$OUT/tiles/manifest.csv")"
grep -q '^/data/in/slides/broken.svs,failed,' "$OUT/tiles/manifest.csv" || fail "broken.svs not reported failed"

# A few SimCLR steps on the tiles (CPU recipe shipped in the image, one DataLoader worker: /dev/shm).
step pretrain 0 --shm-size 1g "${mounts[@]}" "$IMAGE" pretrain \
    /opt/pathssl/configs/pretrain/simclr_resnet18_cpu_demo.yaml \
    "data.stores=[/data/out/tiles]" train.out_dir=/data/out/pretrain \
    train.max_steps=2 data.batch_size=8 optim.warmup_steps=1 train.ckpt_every=2 train.log_every=1
[ -s "$OUT/pretrain/last.pt" ] || fail "pretraining wrote no last.pt"
# The multi-GPU command shape (torchrun inside the container), here 2 CPU processes over gloo.
step torchrun-2proc 0 --ipc host "${mounts[@]}" --entrypoint torchrun "$IMAGE" \
    --standalone --nproc_per_node 2 -m pathssl.cli pretrain \
    /opt/pathssl/configs/pretrain/simclr_resnet18_cpu_demo.yaml "data.stores=[/data/out/tiles]" \
    train.out_dir=/data/out/pretrain-ddp train.max_steps=2 data.batch_size=4 optim.warmup_steps=1 \
    data.num_workers=0
[ -s "$OUT/pretrain-ddp/last.pt" ] || fail "torchrun pretraining wrote no last.pt"

# Nuclei to QuPath GeoJSON on a 1024 px region of the CMU slide: a HoVer-Net head trained here for
# 5 steps (MONAI, torch training: what a user's `nuclei train` runs), and the training-free
# classical model where the CLI has one (--model classical).
step nuclei-train 0 --shm-size 1g "${mounts[@]}" "$IMAGE" nuclei train \
    /opt/pathssl/configs/nuclei/hgsc_resnet18_cpu.yaml \
    data.image=/data/in/nuclei/hgsc_nest.jpg data.inst=/data/in/nuclei/hgsc_nest_inst_mask.npz \
    data.types=/data/in/nuclei/hgsc_nest_type_mask.npz train.out_dir=/data/out/nuclei \
    train.max_steps=5 --no-progress
nuclei_models=(/data/out/nuclei/nuclei.pt)
if docker run --rm "$IMAGE" nuclei predict --help | grep -q -- 'classical'; then
    nuclei_models+=(classical)
fi
for m in "${nuclei_models[@]}"; do
    name="$(basename "$m" .pt)"
    step "predict-$name" 0 "${mounts[@]}" "$IMAGE" nuclei predict \
        /data/in/slides/CMU-1-Small-Region.svs --region 0 0 1024 1024 --checkpoint "$m" \
        --out "/data/out/predict-$name" --no-progress
done

# 3. An output folder the container user cannot write: a clear one-line error, exit 2, no work.
locked="$OUT.locked"
mkdir -p "$locked"
chmod 555 "$locked"
locked_mounts=(-v "$DATA:/data/in:ro" -v "$locked:/data/out")
step unwritable-tile 2 "${locked_mounts[@]}" "$IMAGE" tile /data/in/slides --out /data/out/tiles
step unwritable-pretrain 2 "${locked_mounts[@]}" -v "$OUT:/data/prev:ro" "$IMAGE" pretrain \
    /opt/pathssl/configs/pretrain/simclr_resnet18_cpu_demo.yaml "data.stores=[/data/prev/tiles]" \
    train.out_dir=/data/out/pretrain
step unwritable-nuclei 2 "${locked_mounts[@]}" -v "$OUT:/data/prev:ro" "$IMAGE" nuclei predict \
    /data/in/nuclei/hgsc_nest.jpg --checkpoint /data/prev/nuclei/nuclei.pt \
    --out /data/out/predict
for s in unwritable-tile unwritable-pretrain unwritable-nuclei; do
    grep -qiE 'not writable|cannot write|cannot be created' "$logs/$s.log" ||
        fail "$s: no clear error: $(cat "$logs/$s.log")"
done
[ -z "$(ls -A "$locked")" ] || fail "a command wrote into the unwritable folder"
rmdir "$locked"

# 4. Checks on the host.
"$HOST_PATHSSL" tile --verify "$OUT/tiles" > "$logs/verify.log" 2>&1 || fail "tile --verify: $(tail -3 "$logs/verify.log")"
python3 - "$OUT" << 'EOF' || fail "store or GeoJSON check"
import csv, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
stores = sorted((out / "tiles").glob("*.zarr"))
assert stores, "no stores"
for s in stores:
    assert json.loads((s / "zarr.json").read_text())["attributes"]["complete"] is True, s
print(f"docker-test: {len(stores)} stores, each complete: true")
# Each GeoJSON: a FeatureCollection of polygons, as many as nuclei_manifest.csv counts. The
# 5-step head may find none; the classical model must find some.
files = sorted(out.glob("predict-*/*.geojson"))
assert files, "no GeoJSON"
for f in files:
    doc = json.loads(f.read_text())
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection", f
    assert all(x["type"] == "Feature" and x["geometry"]["type"] == "Polygon" for x in feats), f
    rows = {r["id"]: r for r in csv.DictReader(open(f.parent / "nuclei_manifest.csv"))}
    assert int(rows[f.stem]["nuclei"]) == len(feats), (f, rows[f.stem])
    assert feats or f.parent.name != "predict-classical", f"{f}: no nuclei"
    print(f"docker-test: {f.parent.name}/{f.name}: valid, {len(feats)} nuclei as features")
EOF
wrong="$(find "$OUT" \( ! -uid "$uid" -o ! -gid "$gid" \) -print | head -5)"
[ -z "$wrong" ] || fail "files not owned by $RUN_AS: $wrong"
echo "docker-test: $(find "$OUT" | wc -l) output paths, all owned by $RUN_AS; tile --verify: $(tail -1 "$logs/verify.log")"

echo
echo "docker-test: PASSED. Image $IMAGE (base $BASE): ${size_mb} MB, build ${build_s} s."
printf '  %s\n' "${results[@]}"
if [ -n "$made_out" ] && [ -z "${KEEP:-}" ]; then
    rm -rf "$OUT" "$logs"
else
    echo "  Outputs: $OUT, logs: $logs"
fi
