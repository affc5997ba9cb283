"""argparse, with every usage error on one line.

argparse prints the usage and then the error: two lines or more. Start-up
errors of both programs are one line (scripts and mount(8) show the first
line), so a usage error is too, with where to read more, and exit status 2
as argparse has it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

USAGE_EXIT = 2


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: {message} (see {self.prog} --help)\n")
