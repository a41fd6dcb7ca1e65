"""capalign: make small vision-language models caption better with little or no labelled data."""

__version__ = "0.1.0"


class CapalignError(Exception):
    """An error caused by the user's input. The CLI prints it as one line and exits with code 2."""
