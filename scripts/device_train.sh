#!/usr/bin/env bash
# Train the `gpu` preset on a lent GPU machine (docs/TRAINING.md, "Training on the GPU device").
#
#   device call k < last, carry [".device/up/callk"]:  bash scripts/device_train.sh stage
#   last device call, carry [".device/up/callN"]:      bash scripts/device_train.sh train MINUTES
#
# `stage` copies the upload pieces this call carried to /tmp/electric-up, outside the
# repository copy, where they stay while the machine is held (it goes back 30 s after a call
# returns: make the next call at once). `train` stages its own piece, checks that every piece
# of index.json is there (device_pieces.join_pieces checks their sha256), trains for MINUTES
# and leaves the run's pieces, device.json and train.log in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
UP=/tmp/electric-up
WORK=/tmp/electric-work

stage() {
    mkdir -p "$UP"
    found=0
    for dir in .device/up/call*/; do
        [ -f "$dir/index.json" ] || continue
        cp "$dir"/* "$UP"/ && found=1
        echo "staged $dir"
    done
    [ "$found" = 1 ] || { echo "no .device/up/call*/ carried in this call" >&2; exit 2; }
    python3 - "$UP" "${1:-}" <<'PY'
import json, pathlib, sys
up = pathlib.Path(sys.argv[1])
names = [p["name"] for p in json.loads((up / "index.json").read_text())["pieces"]]
missing = sorted(n for n in names if not (up / n).is_file())
print(f"{len(names) - len(missing)} of {len(names)} pieces staged; missing: {missing}")
if missing and sys.argv[2] == "all":
    sys.exit("the machine lost the earlier calls' pieces (it was given back): stage them again")
PY
}

case "${1:-}" in
    stage) stage ;;
    train)
        minutes="${2:?usage: device_train.sh train MINUTES [--set KEY=VALUE]...}"
        shift 2
        stage all
        : "${OUT:?OUT is not set: run this through the device tool}"
        nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
        export PYTHONPATH=. PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
        rm -rf "$WORK"
        python3 -m model_export.device_train --upload "$UP" --work "$WORK" --out "$OUT" \
            --minutes "$minutes" "$@" 2>&1 | tee "$OUT/train.log"
        ls -l "$OUT"
        ;;
    *) echo "usage: $0 stage | train MINUTES [--set KEY=VALUE]..." >&2; exit 2 ;;
esac
