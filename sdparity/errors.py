"""One exception type for everything a user can get wrong; the CLI prints it as one line."""


class SdparityError(Exception):
    """A problem the user can act on (bad model folder, missing browser, corrupt cache...).

    The CLI prints ``sdparity: error: <message>`` and exits with status 2.
    """
