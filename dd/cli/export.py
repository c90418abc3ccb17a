"""dd-export: write a distilled set in another format.

    dd-export outputs/run/distilled grid.png --format png                  # one row per class, pixel space
    dd-export outputs/run/distilled exports/digits_if --format imagefolder # torchvision ImageFolder
    dd-export outputs/run/distilled exports/digits_hf --format hf          # datasets.load_from_disk
    dd-export outputs/run/distilled exports/digits_pt --format mtt_pt      # images_best.pt, labels_best.pt, lr_best.pt

Other projects' sets come in through dd-import.
"""

import argparse
import sys

from dd.cli.common import guarded, version_line
from dd.cli.parser import OneLineParser
from dd.convert import FORMATS, export_set
from dd.errors import DDError

PROG = "dd-export"
IMPORT_MOVED = ("importing other projects' sets is dd-import's job: dd-import SOURCE OUT --dataset NAME "
                "[--format auto|mtt|datm|dc|imagefolder|ncfm] (see dd-import --help)")


def refuse_old_usage(argv: list[str]) -> None:
    """The former key=value command line (path=... format=... out=...) is refused, an import naming dd-import."""
    if "format=ddlab" in argv:
        raise DDError(IMPORT_MOVED)
    old = [a for a in argv if a.partition("=")[0] in ("path", "format", "out")]
    if old:
        raise DDError(f"'{old[0]}': key=value arguments are gone; usage: dd-export SET OUT --format "
                      f"{'|'.join(FORMATS)}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line(PROG))
    p.add_argument("set", metavar="SET", help="a ddlab set (a run's distilled/ folder)")
    p.add_argument("out", metavar="OUT", help="where to write it: a folder, or with --format png a .png file")
    p.add_argument("--format", required=True, metavar="|".join(FORMATS), help="the format to write")
    guarded(PROG, lambda: refuse_old_usage(argv))
    args = p.parse_args(argv)

    def go():
        if args.format == "ddlab":
            raise DDError(IMPORT_MOVED)
        return export_set(args.set, args.format, args.out)

    print(f"written: {guarded(PROG, go)}")


if __name__ == "__main__":
    main()
