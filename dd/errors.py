"""The one exception type users see as a clean one-line message."""


class DDError(ValueError):
    """Bad input from the user (config value, missing file, corrupt artifact).

    The CLI prints ``str(err)`` as a single line and exits with code 2, so the
    message must name the offending value and say what is allowed.
    """
