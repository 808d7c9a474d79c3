"""The one exception type that means "the user gave us something we cannot use".

Every interface turns it into a readable message: the CLI prints one line and exits 2, the tab shows it
in the log, the REST API answers 4xx with JSON. Anything else escaping the core is a bug.
"""


class DreamboothError(Exception):
    """Bad input or an impossible request. `field` names the setting or argument at fault, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def shorten(value, limit: int = 80) -> str:
    """`repr(value)` cut to about `limit` characters: error messages never echo large input back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
