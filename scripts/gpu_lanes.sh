#!/usr/bin/env bash
# The accuracy benchmark's runs side by side on one GPU machine (bench_lanes.py), for a session lent one.
# The machine is bare and offline: it gets the repository, the Ultralytics wheels (.whl/, see below) and the cached
# stages of the users' regime, copied by the session into gpu_carry/ (a teacher and a pretrained student, in their
# run-folder layout: gpu_carry/teacher_*/weights/best.pt and gpu_carry/pretrain_yolov8n_*/weights/best.pt). Without
# them it trains both first (the 150-epoch yolov8m teacher of docs/BENCHMARKS.md), which takes part of the deadline.
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ultralytics==8.4.190 ultralytics-thop
#   bash scripts/gpu_lanes.sh EPOCHS DEADLINE_SECONDS      # results in $OUT (table.md, accuracy_results.jsonl, runs.tgz)
#   TEACHER_MODEL=yolov8x.yaml bash scripts/gpu_lanes.sh ...   # the mission's own pair: trains a yolov8x teacher first
#                                                               # unless one is carried (TEACHER_EPOCHS, default 150)
#   IMGSZ=64 bash scripts/gpu_lanes.sh 100 DEADLINE_SECONDS   # the 64-px stand-in of docs/BENCHMARKS.md, with its
#       stages carried (they fit the 64 MiB that travels: the stripped yolov8m teacher is 52 MB, the student 6 MB);
#       a carried teacher must have been trained at the IMGSZ given (the script cannot tell)
#
# Schedule: 60 epochs is early training here (a 120-epoch baseline still rises 3.9 points over its last quarter,
# docs/BENCHMARKS.md); for the plateau give EPOCHS of 300 or more, and a teacher trained longer than the 50-epoch one
# (it leads the 120-epoch baseline by only 10.5 points).
# Lanes: the users' regime (finetune) on 3 seeds: baseline, native, the default, the student started from the
# teacher's weights instead of the pretrained .pt (default_yaml, and baseline_init without KD terms: the largest gain
# the 64-px stand-in showed, 2026-12-03, with a teacher that had no lead), and CrossKD added to the default (the one
# 2026-12-02 candidate with a consistent sign). RUNS replaces the list (bench_lanes.py's --runs syntax), e.g. with
# "default:kd_cls=2,kd_box=1" "default:kd_cls_temp=1,kd_box_temp=1", which seed noise could not separate either.
epochs=${1:-60}; deadline=${2:-500}; device=${DEVICE:-0}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tmodel=${TEACHER_MODEL:-yolov8m.yaml}; tepochs=${TEACHER_EPOCHS:-150}
imgsz=${IMGSZ:-128}; tsource=${TEACHER_SOURCE_EPOCHS:-30}  # the 64-px stand-in: IMGSZ=64 TEACHER_SOURCE_EPOCHS=10
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch, ultralytics; print(torch.__version__, ultralytics.__version__, torch.cuda.is_available())"
W=/tmp/w; mkdir -p $W
T=$(ls gpu_carry/teacher_*/weights/best.pt 2>/dev/null); S=$(ls gpu_carry/pretrain_yolov8n_*/weights/best.pt 2>/dev/null)
if [ -z "$T" ] || [ -z "$S" ]; then  # nothing carried: train the teacher (150 epochs) and the pretrained student here
  python3 scripts/bench_accuracy.py --prepare-only --methods baseline --regime finetune --teacher-model "$tmodel" \
    --imgsz "$imgsz" --epochs "$epochs" --teacher-epochs "$tepochs" --source-epochs 20 --teacher-source-epochs "$tsource" \
    --source-n-train 400 --device "$device" --project $W/bench --data-root $W/data > "$OUT/prepare.log" 2>&1 || exit 1
  T=$(ls $W/bench/finetune/teacher_best_*/weights/best.pt); S=$(ls $W/bench/finetune/pretrain_yolov8n_*/weights/best.pt)
fi
deadline=$((deadline - SECONDS))  # what the install and any stage training left of it
runs=${RUNS:-baseline native default default_yaml baseline_init "default:kd_cross=1"}
eval "set -- $runs"  # the quoted entries stay whole
python3 scripts/bench_lanes.py --runs "$@" --seeds 0 1 2 --lanes 18 --deadline "$deadline" --logs $W/lanes -- \
  --regime finetune --teacher "$T" --pretrained-student "$S" --imgsz "$imgsz" --epochs "$epochs" --device "$device" \
  --project $W/bench --data-root $W/data --out "$OUT/table.md" > "$OUT/driver.log" 2>&1
cp $W/bench/finetune/accuracy_results.jsonl "$OUT/accuracy_results.jsonl"
tar czf "$OUT/runs.tgz" --exclude='*.pt' -C $W lanes bench
ls -la "$OUT"
