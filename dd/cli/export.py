"""dd-export: convert a distilled set to other formats, or import other projects' released sets.

    dd-export path=outputs/run/distilled format=png out=grid.png
    dd-export path=outputs/run/distilled format=imagefolder out=exports/digits_if
    dd-export path=outputs/run/distilled format=hf out=exports/digits_hf
    dd-export path=outputs/run/distilled format=mtt_pt out=exports/digits_pt
    dd-export path=logged_files/CIFAR10/run format=ddlab dataset=cifar10 dataset.root=data/cifar10 dataset.zca=true out=imported
    dd-export path=result/res_DC_CIFAR10_ConvNet_10ipc.pt format=ddlab dataset=cifar10 dataset.root=data/cifar10 experiment=2 out=imported
    dd-export path=syn_data/cifar100_ipc50 format=ddlab source_format=imagefolder dataset=cifar100 dataset.root=data/cifar100 out=imported
    dd-export path=distilled_data/data_20000.pt format=ddlab source_format=ncfm factor=2 dataset=cifar10 dataset.root=data/cifar10 out=imported

format=ddlab keys: source_format=auto|mtt|datm|dc|imagefolder|ncfm (auto: from the files), the source's
preprocessing source_space=normalized|zca|pixels and source_stats=<dataset whose mean/std it used> (defaults:
what the format's reference code does; mtt/datm follow dataset.zca), experiment=<i> (dc), factor=<k> (ncfm
mosaics, default 2), range_check=false (skip the [0, 1] pixel check), ipc=<n>. See dd/importers.py.
"""

import sys
from pathlib import Path

from dd.cli.common import guarded
from dd.errors import DDError

PROG = "dd-export"
KEYS = ("path", "format", "out", "dataset", "dataset.root", "dataset.zca", "dataset.source", "dataset.download", "ipc",
        "source_format", "source_space", "source_stats", "experiment", "factor", "range_check")


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
    from dd.convert import FORMATS, WRITERS
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
        from dd.importers import import_set

        flag = lambda k, default="false": args.get(k, default).lower() in ("1", "true", "yes")  # noqa: E731
        load_data = lambda zca: load_image_dataset(  # noqa: E731
            args["dataset"], root=args.get("dataset.root"), zca=zca, source=args.get("dataset.source", "torchvision"),
            download=flag("dataset.download"))
        ds = import_set(path, load_data, dataset_zca=flag("dataset.zca"),
                        source_format=args.get("source_format", "auto"), source_space=args.get("source_space"),
                        source_stats=args.get("source_stats"), experiment=_int(args, "experiment", 0),
                        factor=_int(args, "factor"), ipc=_int(args, "ipc"), range_check=flag("range_check", "true"))
        return ds.save(out)
    return WRITERS[fmt](load(path), out)


def _int(args: dict[str, str], key: str, default: int | None = None) -> int | None:
    if key not in args:
        return default
    try:
        return int(args[key])
    except ValueError:
        raise DDError(f"{key}={args[key]!r} must be an integer") from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    out = guarded(PROG, lambda: export(parse(argv)))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
