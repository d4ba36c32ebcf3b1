"""One error type for bad input: it names what is wrong, where, and how to fix it."""

from __future__ import annotations


class FactoryError(Exception):
    """Bad input or a missing part. Printed by the CLI as one line, without a traceback."""

    def __init__(self, what: str, *, where: str | None = None, field: str | None = None, fix: str | None = None):
        self.what, self.where, self.field, self.fix = what, where, field, fix
        parts = []
        if where:
            parts.append(f"{where}")
        if field:
            parts.append(f"field '{field}'")
        head = ": ".join(parts)
        msg = f"{head}: {what}" if head else what
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)

    def __reduce__(self):  # crosses processes (Ray) whole: its fields, its class
        return _rebuild, (type(self), self.what, self.where, self.field, self.fix)


def _rebuild(cls: type, what: str, where: str | None, field: str | None, fix: str | None) -> FactoryError:
    return cls(what, where=where, field=field, fix=fix)


class Stopped(KeyboardInterrupt):
    """SIGTERM (a job stop, a drained node, `kill`): raised in the main thread, so a command ends as
    on Ctrl-C: its stage's manifest says `failed`, its request cache is closed (spooled completions
    uploaded), the teacher replicas, Ray actors or torchrun it started are stopped."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


_stops: list[Stopped] = []


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Stopped in the main thread; a second SIGTERM kills at once."""
    import signal

    def stop(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        _stops.append(Stopped(signum))
        raise _stops[-1]

    signal.signal(signal.SIGTERM, stop)


def stopped() -> Stopped | None:
    """The stop this process received, if any (a library on the way, Ray's, may re-raise it as a
    plain KeyboardInterrupt)."""
    return _stops[0] if _stops else None
