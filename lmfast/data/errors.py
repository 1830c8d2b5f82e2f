"""The one error type of `lmfast prepare`: bad input, with the flag (field) and the rule it broke."""

from __future__ import annotations


class PrepareError(ValueError):
    """Bad input for `prepare`: one line naming the flag or file and the problem.

    `PrepareError(field, rule)` is the structured form raised by option checks (`str()` is
    "--field: rule"; `.field` and `.rule` are kept for callers that report them otherwise);
    `PrepareError(message)` carries a message about a file that already names it.
    """

    def __init__(self, field_or_message: str, rule: str | None = None) -> None:
        self.field = field_or_message if rule is not None else None
        self.rule = rule if rule is not None else field_or_message
        if rule is None or rule.startswith(f"--{field_or_message} "):  # the rule names its flag
            super().__init__(self.rule)
        else:
            super().__init__(f"--{field_or_message}: {rule}")
