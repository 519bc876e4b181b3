"""How errors are told to users, importable without torch (the command line's last resort)."""


def error_line(error: BaseException) -> str:
    """What users are told of an error: its first line, or its type when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
