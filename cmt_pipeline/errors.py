"""CMTError lives apart from utils (which imports torch) so that configs and the CLI's error handling load fast."""


class CMTError(Exception):
    """A user-facing error: the message names the problem and the fix; the CLI prints it on one line."""
