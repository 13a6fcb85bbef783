"""The one exception type the CLI turns into a one-line error message."""


class SekdError(Exception):
    """A user-facing error: bad input, bad config or a missing file. Its message names the culprit."""
