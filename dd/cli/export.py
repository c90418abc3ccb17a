"""dd-export: convert a distilled set to other formats, or import trajectory-matching tensors.

    dd-export path=outputs/run/distilled format=png out=grid.png
    dd-export path=outputs/run/distilled format=imagefolder out=exports/digits_if
    dd-export path=outputs/run/distilled format=hf out=exports/digits_hf
    dd-export path=outputs/run/distilled format=mtt_pt out=exports/digits_pt
    dd-export path=logged_files/CIFAR10/run format=ddlab dataset=cifar10 dataset.root=data/cifar10 dataset.zca=true out=imported
"""

import sys
from pathlib import Path

from dd.cli.common import guarded
from dd.errors import DDError

PROG = "dd-export"
KEYS = ("path", "format", "out", "dataset", "dataset.root", "dataset.zca", "dataset.source", "dataset.download", "ipc")


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in KEYS:
            raise DDError(f"argument '{a}' is not understood; give key=value with key one of: {', '.join(KEYS)}")
        args[key] = value
    for key in ("path", "format", "out"):
        if key not in args:
            raise DDError(f"{key}=... is missing; usage: dd-export path=<set> format=<format> out=<dir>")
    return args


def export(args: dict[str, str]) -> Path:
    from dd.convert import FORMATS, WRITERS, from_mtt_pt
    from dd.export import load

    fmt, path, out = args["format"], Path(args["path"]), Path(args["out"])
    if fmt not in FORMATS:
        raise DDError(f"format '{fmt}' is unknown; choose one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise DDError(f"path {path} does not exist")
    if fmt == "ddlab":
        if "dataset" not in args:
            raise DDError("format=ddlab needs dataset=<name> (the dataset the tensors were distilled from)")
        from dd.data import load_image_dataset

        flag = lambda k: args.get(k, "false").lower() in ("1", "true", "yes")  # noqa: E731
        data = load_image_dataset(args["dataset"], root=args.get("dataset.root"), zca=flag("dataset.zca"),
                                  source=args.get("dataset.source", "torchvision"), download=flag("dataset.download"))
        ds = from_mtt_pt(path, data, ipc=int(args["ipc"]) if "ipc" in args else None)
        return ds.save(out)
    return WRITERS[fmt](load(path), out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    out = guarded(PROG, lambda: export(parse(argv)))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
