"""argparse for the plain (non-Hydra) dd-* commands: a usage error is one line on stderr and exit code 2,
like every other refusal (dd.cli.common.fail)."""

import argparse

from dd.cli.common import fail
from dd.errors import DDError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        fail(self.prog, DDError(f"{message} (see {self.prog} --help)"))
