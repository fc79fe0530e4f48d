"""Process state from /proc, shared by whatever supervises processes it may not have started."""


def pid_alive(pid):
    """Running and not a zombie (whoever's child it is): kill(pid, 0) would count a zombie alive."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
