"""The one exception type for bad data input, so scripts can turn it into a clean one-line exit."""


class DataError(Exception):
    """Unusable input (missing file, bad record, empty corpus...); the message names file/line/key.

    Whitespace runs (including newlines from wrapped library errors) are collapsed: always one line.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
