"""CMTError lives in a module that imports nothing, so that configs and the CLI's error handling load fast."""


class CMTError(Exception):
    """A user-facing error: the message names the problem and the fix; the CLI prints it on one line."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """What a one-line error quotes of an exception: its type and the first line of its message (cut to `limit`).
    Some libraries raise with an empty message, where `str(e).splitlines()[0]` itself fails."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__
