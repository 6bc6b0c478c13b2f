"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class NmtError(Exception):
    """A user-facing error: bad input, a missing file, an unreachable mirror.

    The message is printed as it is, on one line, so it must name the file, line or option at fault.
    """
