"""Write train/test CSVs (text,label) from Debian's fortune files: real text for dataset=text_files.

    python experiments/text/fortunes_csv.py OUT_DIR --classes politics:390:200 food:120:78 sports:90:57

Each CATEGORY:N_TRAIN:N_TEST takes the file's first N_TRAIN entries (file order) for train and the
next N_TEST for test. The committed fixture tests/data/fortunes_small was made with:
    python experiments/text/fortunes_csv.py tests/data/fortunes_small \
        --classes computers:150:80 politics:100:60 food:30:20 sports:20:15
"""

import argparse
from pathlib import Path

import pandas as pd

from dd.data.text import FORTUNES_DIR, fortune_entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", nargs="+", required=True, help="CATEGORY:N_TRAIN:N_TEST")
    ap.add_argument("--root", default=FORTUNES_DIR)
    args = ap.parse_args()
    rows = {"train": [], "test": []}
    for spec in args.classes:
        name, n_train, n_test = spec.split(":")
        entries = fortune_entries(Path(args.root) / name)
        n_train, n_test = int(n_train), int(n_test)
        if n_train + n_test > len(entries):
            raise SystemExit(f"{name} has {len(entries)} entries, fewer than {n_train} + {n_test}")
        rows["train"] += [(t, name) for t in entries[:n_train]]
        rows["test"] += [(t, name) for t in entries[n_train : n_train + n_test]]
    args.out.mkdir(parents=True, exist_ok=True)
    for split, r in rows.items():
        pd.DataFrame(r, columns=["text", "label"]).to_csv(args.out / f"{split}.csv", index=False)
        print(f"{args.out / f'{split}.csv'}: {len(r)} rows")


if __name__ == "__main__":
    main()
