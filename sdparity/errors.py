"""What a user sees of a run: one exception type for everything a user can get wrong (the CLI
prints it as one line), and progress lines."""

import sys


class SdparityError(Exception):
    """A problem the user can act on (bad model folder, missing browser, corrupt cache...).

    The CLI prints ``sdparity: error: <message>`` and exits with status 2.
    """


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"


def one_line_main(prog: str, main, argv=None) -> int:
    """Run a module's main(); expected failures (bad folder, missing tool, model error) end as
    one line on stderr and exit status 2 instead of a traceback."""
    import sys

    from reference.models import ModelError

    try:
        return main(argv)
    except (SdparityError, ModelError, RuntimeError, OSError, ValueError, KeyError) as e:
        print(f"{prog}: error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        return 2


class Progress:
    """Progress lines on stderr (one per build, case and check); quiet=True silences them."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream, self.quiet = stream or sys.stderr, quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream, flush=True)
