"""absl flags for the command-line tools, parsed into a private ``FlagValues`` per call.

Each tool defines its flags in a ``define_flags(fv)`` function; :func:`parse` parses ``argv`` (without the
program name) into a fresh ``flags.FlagValues``, so a tool's ``main(argv)`` can be called from tests and
notebooks without touching the process-wide ``absl.flags.FLAGS``. Flag names keep their dashes on the command
line (``--mocap-dir``) and become attributes with underscores (``args.mocap_dir``). A flag that does not parse
raises :class:`UsageError`; :func:`run` turns it, and the tool's user errors, into one line on stderr and exit
status 2.
"""
from __future__ import annotations

import sys
import types
from typing import Callable, List, Optional, Sequence, Tuple

from absl import flags

EXIT_USER_ERROR = 2


class UsageError(ValueError):
    """A command line that does not parse (unknown flag, bad value, missing required flag)."""


def parse(define_flags: Callable[[flags.FlagValues], None], argv: Optional[Sequence[str]], prog: str,
          required: Sequence[str] = (), positional: Tuple[int, int] = (0, 0)):
    """(namespace of flag values, positional arguments) of ``argv`` (None: ``sys.argv[1:]``).

    ``positional``: (min, max) number of positional arguments allowed.
    """
    fv = flags.FlagValues()
    fv.set_gnu_getopt(True)  # flags before and after positional arguments
    define_flags(fv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest = fv([prog] + argv)[1:]
    except flags.Error as e:
        raise UsageError(str(e)) from None
    missing = [name for name in required if fv[name].value in (None, [], '')]
    if missing:
        raise UsageError(f'missing required flags: {", ".join("--" + m for m in missing)}')
    low, high = positional
    if not low <= len(rest) <= high:
        raise UsageError(f'expected {low}-{high} positional arguments, got {rest}')
    values = {name.replace('-', '_'): fv[name].value for name in fv}
    return types.SimpleNamespace(**values), rest


def run(main: Callable[[List[str]], int], prog: str) -> None:
    """``sys.exit(main(sys.argv[1:]))`` with usage errors as one line and exit status 2."""
    try:
        code = main(sys.argv[1:])
    except UsageError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        code = EXIT_USER_ERROR
    sys.exit(code)
