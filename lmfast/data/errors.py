"""The one error type of `lmfast prepare`: bad input, with the flag (field) and the rule it broke."""

from __future__ import annotations

from lmfast.flags import UserError


class PrepareError(UserError):
    """Bad input for `prepare`: one line naming the flag or file and the problem.

    `PrepareError(field, rule)` is the structured form raised by option checks (`str()` is
    "--field: rule"; `.field` and `.rule` are kept for callers that report them otherwise);
    `PrepareError(message)` carries a message about a file that already names it.
    """

    def line(self) -> str:
        if not self.field or self.rule.startswith(f"--{self.field} "):  # the message names its flag
            return self.rule
        return f"--{self.field}: {self.rule}"
