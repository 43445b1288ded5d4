#!/bin/bash
# The FER+ training job for a GPU lent for minutes: one call (README.md beside this file: prepare, run, bring back).
# Every run trains on the FER+ vote shares (train --label-source ferplus), keeps its best epoch by the accuracy
# against the FER+ majority of val, and fits a whole cosine schedule into its time budget (train --time-budget):
#   phase A, side by side: S1_w15s2_ft, the shipped student (.gpu/init_default.npz, float16) fine-tuned on the
#     votes, and two teachers from scratch on the votes (T1_vgg_w1_d3, T2_sepse_w3_d3);
#   phase C, if MIN_C minutes or more are left: D1_w15s2_kd, S1's best distilled online from the teachers that beat
#     S1 (train --teacher-models: they score each augmented batch; target (1 - ALPHA) x votes + ALPHA x teachers).
# Returned in $OUT: S1_w15s2_ft.tgz and D1_w15s2_kd.tgz (best.keras without optimizer state, logs), the teachers'
# float16 weights (T*.npz, pack.py unpack-weights) and logs (teachers.tgz), speed.txt.
# Run there: set -o pipefail; END=560 bash train_export/gpu_job/job.sh 2>&1 | tee $OUT/job.log
#   (carrying .whl and .gpu; END: the seconds the call may use, its limit_s minus about 30).
# Env: END; BUDGET_A, BUDGET_C (minutes; by default from END, phase C getting C_SHARE 0.4 of what is left after the
# setup); MIN_C (2.5: a shorter run is mostly compiling); ALPHA (0.5); BATCH (256); PROBE_S (60) and SLOW_MS (150)
# for the backend probe; KILL_MARGIN (90: the seconds a run may take past its budget, its start included, before it
# is killed); MIN_TEACHER (0.6: a teacher also needs this val accuracy); WORK (/tmp/work); SMALL=1: a CPU
# dry run on 1,500 training and 300 val faces with tiny teachers, which checks the plumbing, not the accuracy.
# shellcheck disable=SC2086  # the flag lists ($TR, $TEACH, $STUD ...) are meant to split into words
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=${WORK:-/tmp/work}
END=${END:-560}
# A warm machine keeps /tmp between calls: a finished time-budgeted run folder cannot be trained into again.
rm -rf "$W/runs"; mkdir -p "$W/runs"
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( END - $(date +%s) + T0 )); }  # seconds left of the call
if ! { [ -f .gpu/train.webp ] && [ -f .gpu/ferplus.npz ] && [ -f .gpu/init_default.npz ]; }; then
  echo ".gpu/ lacks train.webp, ferplus.npz or init_default.npz: prepare it first (gpu_job/README.md)"; exit 1
fi
if [ -d .whl ] && [ -z "${SMALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
smoke() { python3 - <<'PY'
import keras, numpy as np
b = keras.backend.backend()
if b == "jax":
    import jax; gpu = [d for d in jax.devices() if d.platform == "gpu"]; print("jax", jax.__version__, jax.devices())
else:
    import torch; gpu = torch.cuda.is_available(); print("torch", torch.__version__, gpu)
m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(2, activation="softmax")])
m.compile("adam", "sparse_categorical_crossentropy"); m.fit(np.zeros((16, 8, 8, 1)), np.zeros(16), verbose=0)
print("keras", keras.__version__, b, "gpu" if gpu else "NO GPU")
raise SystemExit(0 if gpu else 1)
PY
}
if [ -z "${SMALL:-}" ] && ! smoke; then
  export KERAS_BACKEND=torch
  smoke || { echo "no GPU backend works: stopping (a CPU run there would only waste the lease)"; exit 1; }
fi
BATCH=${BATCH:-256}
# The median of a few timed steps of the real loop picks the backend: JAX unless it is slow (SLOW_MS) and PyTorch is
# faster (2026-11-27: JAX 16 ms a step of sepse w1.5 at batch 256 on an H100; PyTorch's eager augmenter about 0.3 s).
probe() {
  KERAS_BACKEND=$1 PYTHONPATH="${PYTHONPATH:-$PWD}" timeout "${PROBE_S:-60}" python3 benchmarks/train_speed.py --variants sepse:1.5 --warmup 3 \
      --steps 8 --batch-size "$BATCH" 2>/dev/null | tee -a "$OUT/speed.txt" | awk -F'|' '
        /^\| model / {for (i = 1; i <= NF; i++) {h = $i; gsub(/ /, "", h); if (h == "ms/step") c = i}}
        c && /^\| sepse/ {gsub(/ /, "", $c); print $c; exit}'  # the ms/step column, found by its name
}
if [ -z "${SMALL:-}" ]; then
  MS=$(probe "$KERAS_BACKEND"); el "probe $KERAS_BACKEND: ${MS:-no result} ms/step (sepse w1.5, batch $BATCH)"
  if [ "$KERAS_BACKEND" = jax ] && { [ -z "$MS" ] || [ "$MS" -gt "${SLOW_MS:-150}" ]; }; then
    MT=$(probe torch); el "probe torch: ${MT:-no result} ms/step"
    if [ -n "$MT" ] && { [ -z "$MS" ] || [ "$MT" -lt "$MS" ]; }; then export KERAS_BACKEND=torch; fi
  fi
fi
el "backend $KERAS_BACKEND"
if ! { python3 "$HERE/pack.py" unpack .gpu "$W" && python3 "$HERE/pack.py" unpack-weights .gpu/init_default.npz "$W/init.keras"; }; then
  echo "unpacking .gpu failed"; exit 1
fi
if [ -n "${SMALL:-}" ]; then  # a seeded subset, the votes cut to the same rows
  python3 - "$W" <<'PY'
import sys
import numpy as np
w = sys.argv[1]
with np.load(f"{w}/ferplus.npz") as z:
    votes = {k: z[k] for k in z.files}
for split, n in (("train", 1500), ("val", 300)):
    with np.load(f"{w}/{split}.npz") as z:
        x, y = z["x"], z["y"]
    i = np.sort(np.random.default_rng(0).permutation(len(y))[:n])
    np.savez(f"{w}/{split}.npz", x=x[i], y=y[i])
    votes[f"{split}_votes"] = votes[f"{split}_votes"][i]
np.savez(f"{w}/ferplus.npz", **votes)
PY
fi
el "data ready"
TR="python3 -m train_export train --train $W/train.npz --val $W/val.npz --ferplus $W/ferplus.npz --label-source ferplus
    --log-lines --no-mixed-precision --batch-size $BATCH --label-smoothing 0"
# The learning rates below are for batch 64; a batch of BATCH takes them times sqrt(BATCH / 64).
lr() { python3 -c "print('%.2g' % ($1 * ($BATCH / 64) ** 0.5))"; }
# The teachers train with the camera degradation, as every teacher since 2026-11-27 has (gpu_job/README.md).
TEACH="--mix-prob 0.2 --erasing-prob 0.1 --class-weight none --camera-prob 0.3 --noise 0.04"
STUD="--width 1.5 --stem-stride 2 --mix-prob 0.2 --erasing-prob 0.1 --class-weight none --camera-prob 0.3 --noise 0.04"
START_S=40   # a run's start before its budget's clock: imports, data, model (its compiles are inside the budget)
FINISH_S=45  # the end: the last slimming and packing
AVAIL=$(( $(left) - FINISH_S ))
C=${BUDGET_C:-$(python3 -c "c = ${C_SHARE:-0.4} * $AVAIL / 60; print(round(c, 2) if c >= ${MIN_C:-2.5} else 0)")}
A=${BUDGET_A:-$(python3 -c "print(round(max(1, ($AVAIL - $START_S - ($C * 60 + $START_S if $C > 0 else 0)) / 60), 2))")}
el "phase A budget $A min, phase C budget $C min"
run() { local name=$1 kill=$2; shift 2; timeout "$kill" $TR --run-dir "$W/runs/$name" "$@" > "$W/runs/$name.log" 2>&1
        el "$name rc=$?"; }
KILL_A=$(python3 -c "print(int($A * 60 + ${KILL_MARGIN:-90}))")
(sleep 120; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | sed 's/^/[phase A at 120 s] /') &
if [ -n "${SMALL:-}" ]; then VGG="--width 0.25 --depth 1"; SEP="--width 0.5 --depth 1"; else VGG="--width 1 --depth 3"; SEP="--width 3 --depth 3"; fi
PIDS=""
run S1_w15s2_ft "$KILL_A" $STUD --epochs 200 --seed 21 --learning-rate "$(lr 5e-4)" --warmup-epochs 1 \
    --init-weights "$W/init.keras" --time-budget "$A" & PIDS="$PIDS $!"
run T1_vgg_w1_d3 "$KILL_A" --model vgg $VGG --learning-rate "$(lr 1e-3)" --dropout 0.4 --epochs 300 --seed 12 \
    $TEACH --time-budget "$A" & PIDS="$PIDS $!"
run T2_sepse_w3_d3 "$KILL_A" --model sepse $SEP --learning-rate "$(lr 2e-3)" --epochs 300 --seed 13 \
    $TEACH --time-budget "$A" & PIDS="$PIDS $!"
wait $PIDS
el "phase A done"
best() { python3 -c "import json; print(json.load(open('$1/best.json'))['val_accuracy'])" 2>/dev/null; }
for r in "$W"/runs/*/; do echo "$(basename "$r") $(cat "$r/best.json" 2>/dev/null) $(head -c 300 "$r/budget.json" 2>/dev/null)"; done
S1=$W/runs/S1_w15s2_ft
INIT=$W/init.keras  # phase C starts from S1's best, copied first: the packing below rewrites S1's file in place
[ -f "$S1/best.keras" ] && cp "$S1/best.keras" "$W/s1_best.keras" && INIT=$W/s1_best.keras
# Packing on the CPU (JAX_PLATFORMS=cpu) runs beside phase C, which has the GPU.
slim() { JAX_PLATFORMS=cpu python3 -c "
import sys, keras
for path in sys.argv[1:]:
    keras.saving.load_model(path, compile=False).save(path)" "$@"; }
ship() { [ -f "$W/runs/$1/best.keras" ] && slim "$W/runs/$1/best.keras"; tar czf "$OUT/$1.tgz" -C "$W/runs" "$1" "$1.log"; }
(
  ship S1_w15s2_ft
  for t in "$W"/runs/T*/; do  # float16 weights: vgg w1 d3 is about 15.7 MB, under the 16 MiB a returned file may have
    [ -f "$t/best.keras" ] && JAX_PLATFORMS=cpu python3 "$HERE/pack.py" pack-weights "$t/best.keras" "$OUT/$(basename "$t").npz"
  done
  (cd "$W/runs" && tar czf "$OUT/teachers.tgz" --exclude=best.keras T*)
) > "$W/pack_a.log" 2>&1 &
PACK_A=$!
# A teacher teaches when it is better on the FER+ majority than the student it would teach (S1) and than MIN_TEACHER:
# one below the student has nothing to pass on. (A SMALL dry run's tiny teachers always teach.)
S1_ACC=$(best "$S1"); S1_ACC=${S1_ACC:-0}
GOOD=()
for t in "$W"/runs/T*/; do
  acc=$(best "$t") || continue
  if [ -n "${SMALL:-}" ] || python3 -c "raise SystemExit(0 if $acc >= max($S1_ACC, ${MIN_TEACHER:-0.6}) else 1)"; then
    GOOD+=("${t}best.keras")
  else
    el "$(basename "$t") does not teach: val $acc against S1's $S1_ACC"
  fi
done
C=$(python3 -c "print(round(max(0, min($C, ($(left) - $FINISH_S - $START_S) / 60)), 2))")
if [ ${#GOOD[@]} -gt 0 ] && python3 -c "raise SystemExit(0 if $C >= ${MIN_C:-2.5} or ('${SMALL:-}' and $C > 0) else 1)"; then
  el "phase C: D1 from $INIT, $C min, teachers ${GOOD[*]}"
  ONLINE=$(IFS=,; echo "${GOOD[*]}")
  run D1_w15s2_kd "$(python3 -c "print(int($C * 60 + ${KILL_MARGIN:-90}))")" $STUD --epochs 200 --seed 22 \
      --learning-rate "$(lr 3e-4)" --warmup-epochs 1 --init-weights "$INIT" --teacher-models "$ONLINE" \
      --distill-alpha "${ALPHA:-0.5}" --time-budget "$C"
else
  el "phase C skipped: ${#GOOD[@]} teacher(s) beat S1, $C min left (it needs ${MIN_C:-2.5})"
fi
wait $PACK_A; cat "$W/pack_a.log"
[ -d "$W/runs/D1_w15s2_kd" ] && ship D1_w15s2_kd
el "phase C done"
for r in "$W"/runs/*/; do echo "$(basename "$r") $(cat "$r/best.json" 2>/dev/null)"; done
ls -la "$OUT"
find "$OUT" -type f -size +16M -exec echo "WARNING: {} is over 16 MiB and will not come back" \;
el "done"
[ -f "$S1/best.keras" ]  # the exit status: whether the fine-tuned student came back
