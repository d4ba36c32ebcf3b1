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
