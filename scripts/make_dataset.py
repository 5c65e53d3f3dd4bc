"""Write the synthetic kdshapes dataset (same as ``yolo-kd dataset``).

python scripts/make_dataset.py --root datasets --name kdshapes --n-train 400 --n-val 100 --imgsz 160 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_kd.dataset import make_dataset  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="datasets")
    p.add_argument("--name", default="kdshapes")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t = time.time()
    path = make_dataset(a.root, a.name, a.n_train, a.n_val, a.imgsz, a.seed)
    print(f"{path} written in {time.time() - t:.1f}s")
