"""dd-presets: the experiment presets, each with its description, the IPCs it publishes and the figure it targets.

    dd-presets                              # the package's presets: dd-distill experiment=<name> ipc=<k>
    dd-presets --config-dir ~/my_conf       # and a user's own folder (~/my_conf/experiment/*.yaml)
    dd-presets --json                       # the same as JSON
"""

import argparse
import json

from dd.cli.common import guarded, version_line
from dd.presets import find_presets, format_presets

PROG = "dd-presets"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=version_line(PROG))
    p.add_argument("--config-dir", "-cd", action="append", default=[], metavar="DIR",
                   help="a config folder of your own, as Hydra's --config-dir: its experiment/*.yaml are listed too "
                        "(repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    args = p.parse_args(argv)

    def go():
        presets = find_presets(args.config_dir)
        if args.json:
            print(json.dumps([{"name": x.name, "description": x.description, "ipcs": x.ipcs, "per_ipc": x.per_ipc, "target": x.target,
                               "path": str(x.path)} for x in presets], indent=1))
        else:
            print(format_presets(presets))

    guarded(PROG, go)


if __name__ == "__main__":
    main()
