"""dd-import: read another project's released distilled set into a ddlab set.

    dd-import logged_files/CIFAR10/run imported --dataset cifar10 --root data/cifar10 --zca
    dd-import result/res_DC_CIFAR10_ConvNet_10ipc.pt imported --dataset cifar10 --root data/cifar10 --experiment 2
    dd-import syn_data/cifar100_ipc50 imported --format imagefolder --dataset cifar100 --root data/cifar100
    dd-import distilled_data/data_20000.pt imported --format ncfm --factor 2 --dataset cifar10 --root data/cifar10

Formats (dd/importers.py documents each, from its authors' code): mtt, datm, dc, imagefolder (SRe2L,
RDED, dd-export's imagefolder), ncfm; auto tells them apart by their files. The source's preprocessing
is a statement (defaults: what the format's code does; mtt/datm follow --zca); the pixels it implies
must lie almost all in [0, 1].
"""

import argparse

from dd.cli.common import guarded, version_line
from dd.cli.parser import OneLineParser
from dd.importers import SOURCE_FORMATS, SPACES, import_into

PROG = "dd-import"


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line(PROG))
    p.add_argument("source", metavar="SOURCE", help="the released set: a folder or a .pt file")
    p.add_argument("out", metavar="OUT", help="the ddlab set to write (a folder)")
    p.add_argument("--format", default="auto", choices=SOURCE_FORMATS, help="the source's format (default: auto)")
    p.add_argument("--dataset", required=True, metavar="NAME", help="the image dataset the set was distilled from")
    p.add_argument("--root", help="the dataset's folder (dataset.root)")
    p.add_argument("--zca", action="store_true",
                   help="the target dataset is ZCA-whitened (dataset.zca=true); for mtt/datm it also states the files are")
    p.add_argument("--dataset-source", default="torchvision", metavar="SOURCE",
                   help="how the dataset is read (dataset.source: torchvision, idx or folder; default torchvision)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing (dataset.download)")
    p.add_argument("--source-space", choices=SPACES, help="what the source's tensors are (default: the format's)")
    p.add_argument("--source-stats", metavar="DATASET",
                   help="the dataset whose mean/std a normalized source used (default: the format's)")
    p.add_argument("--experiment", type=int, default=0, metavar="N", help="dc: which experiment of the file (default 0)")
    p.add_argument("--factor", type=int, metavar="K", help="ncfm: the mosaic factor (default 2; 1 keeps the images)")
    p.add_argument("--ipc", type=int, metavar="N", help="the set's images per class (default: the largest class)")
    p.add_argument("--no-range-check", dest="range_check", action="store_false",
                   help="skip the check that the pixels lie in [0, 1] (take responsibility)")
    args = p.parse_args(argv)

    def go():
        return import_into(args.source, args.out, dataset=args.dataset, root=args.root, zca=args.zca,
                           data_source=args.dataset_source, download=args.download, source_format=args.format,
                           source_space=args.source_space, source_stats=args.source_stats,
                           experiment=args.experiment, factor=args.factor, ipc=args.ipc, range_check=args.range_check)

    ds = guarded(PROG, go)
    m = ds.meta
    print(f"written: {args.out} ({len(ds.labels)} {m['dataset']} images from {m['source_format']}, {m['converted']})")


if __name__ == "__main__":
    main()
