"""The one exception type users see as a clean one-line message."""


class DDError(ValueError):
    """Bad input from the user (config value, missing file, corrupt artifact).

    The CLI prints ``str(err)`` as a single line and exits with code 2, so the
    message must name the offending value and say what is allowed.
    """


def require_positive(values: dict, group: str = "method") -> None:
    """Refuse the first of `values` ({key: value}) that is not > 0 (NaN included), naming `group.key`."""
    for key, value in values.items():
        if not value > 0:
            raise DDError(f"{group}.{key}={value} is not allowed; it must be positive")
