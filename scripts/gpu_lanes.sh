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
#
# Schedule: 60 epochs is early training here (a 120-epoch baseline still rises 3.9 points over its last quarter,
# docs/BENCHMARKS.md); for the plateau give EPOCHS of 300 or more, and a teacher trained longer than the 50-epoch one
# (it leads the 120-epoch baseline by only 10.5 points).
# Lanes: the users' regime (finetune: baseline, native, default on 3 seeds; three default variants on 2) and, beside
# it, the deeper-teacher init from scratch at 20 epochs (issue 14, target 3: kd_init_blocks first against even).
epochs=${1:-60}; deadline=${2:-500}; device=${DEVICE:-0}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tmodel=${TEACHER_MODEL:-yolov8m.yaml}; tepochs=${TEACHER_EPOCHS:-150}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch, ultralytics; print(torch.__version__, ultralytics.__version__, torch.cuda.is_available())"
W=/tmp/w; mkdir -p $W
T=$(ls gpu_carry/teacher_*/weights/best.pt 2>/dev/null); S=$(ls gpu_carry/pretrain_yolov8n_*/weights/best.pt 2>/dev/null)
if [ -z "$T" ] || [ -z "$S" ]; then  # nothing carried: train the teacher (150 epochs) and the pretrained student here
  python3 scripts/bench_accuracy.py --prepare-only --methods baseline --regime finetune --teacher-model "$tmodel" \
    --imgsz 128 --epochs "$epochs" --teacher-epochs "$tepochs" --source-epochs 20 --teacher-source-epochs 30 \
    --source-n-train 400 --device "$device" --project $W/bench --data-root $W/data > "$OUT/prepare.log" 2>&1 || exit 1
  T=$(ls $W/bench/finetune/teacher_best_*/weights/best.pt); S=$(ls $W/bench/finetune/pretrain_yolov8n_*/weights/best.pt)
fi
deadline=$((deadline - SECONDS))  # what the install and any stage training left of it
python3 scripts/bench_lanes.py --runs baseline native default "default:kd_final=0@0,1" "default:kd_assign=0@0,1" \
  "default:kd_cls=0,kd_box=0,kd_cross=1@0,1" --seeds 0 1 2 --lanes 15 --deadline "$deadline" --logs $W/lanes -- \
  --regime finetune --teacher "$T" --pretrained-student "$S" --imgsz 128 --epochs "$epochs" --device "$device" \
  --project $W/bench --data-root $W/data --out "$OUT/table.md" > "$OUT/driver.log" 2>&1 &
sleep 25  # the first driver generates the dataset and writes its label caches first
python3 scripts/bench_lanes.py --runs baseline default "default:kd_init_blocks=even" --seeds 0 1 --lanes 6 \
  --deadline $((deadline - 25)) --logs $W/lanes_scratch -- --regime scratch --teacher "$T" --imgsz 128 --epochs 20 \
  --device "$device" --project $W/bench_scratch --data-root $W/data --out "$OUT/table_scratch.md" \
  > "$OUT/driver_scratch.log" 2>&1 &
wait
cat $W/bench/finetune/accuracy_results.jsonl $W/bench_scratch/accuracy_results.jsonl > "$OUT/accuracy_results.jsonl"
tar czf "$OUT/runs.tgz" --exclude='*.pt' -C $W lanes lanes_scratch bench bench_scratch
ls -la "$OUT"
