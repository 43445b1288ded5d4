#!/bin/bash
# Here, before a GPU call: build the git-ignored .gpu/ (the faces as lossless WebP mosaics, the FER+ votes, the
# shipped student's float16 weights) and .whl/ (the wheels the GPU machine lacks), then measure the upload.
#   bash train_export/gpu_job/prepare.sh
# Env: DATA (../shared/data/fer2013), INIT (a .keras file, or a git object such as the default below, whose float
# weights the job's student starts from), REPACK=1 (encode the faces again even if .gpu/ has them; about 2-3 minutes
# of a free core), LIMIT (67108864 bytes: what the machine accepts of the tree and the two folders together).
set -eu
cd "$(git rev-parse --show-toplevel)"
HERE=train_export/gpu_job
DATA=${DATA:-../shared/data/fer2013}
# The shipped default's float model (gkd_soup_s2_w15), read from the history (commit 5f98811: the last that holds it).
INIT=${INIT:-5f98811:train_export/checkpoints/teachers/gkd_soup_s2_w15/best.keras}
mkdir -p .gpu .whl
if [ -n "${REPACK:-}" ] || [ ! -f .gpu/train.webp ] || [ ! -f .gpu/val.webp ]; then
  python3 $HERE/pack.py pack "$DATA" .gpu
fi
python3 $HERE/pack.py verify "$DATA" .gpu
if [ -f "$INIT" ]; then
  python3 $HERE/pack.py pack-weights "$INIT" .gpu/init_default.npz
else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  git show "$INIT" > "$tmp/init.keras"
  python3 $HERE/pack.py pack-weights "$tmp/init.keras" .gpu/init_default.npz
fi
# The wheels for the machine's CPython 3.12 on x86-64, at the versions installed here (Keras must be the one whose
# .keras files load here; pydantic and pydantic-core only work as a matching pair). optree ships only
# manylinux_2_28 wheels, hence the third platform.
PINS=$(python3 -c "
import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in ('keras', 'namex', 'optree', 'pydantic', 'pydantic-core',
                                                'annotated-types', 'typing-inspection')))")
rm -f .whl/*.whl
# shellcheck disable=SC2086  # PINS is a list of requirements
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl $PINS
ls -l .gpu .whl
# What travels: the tracked and the untracked-but-not-ignored files, and the two folders.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
folders=$(find .gpu .whl -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree + folders)); limit=${LIMIT:-67108864}
echo "upload: tree $tree + .gpu/.whl $folders = $total bytes of $limit"
[ "$total" -le "$limit" ] || { echo "over the limit by $((total - limit)) bytes: move large untracked files aside"; exit 1; }
