"""The dataset reader under its first public path: `from lmfast.data.dataset import PreparedDataset`
keeps working. The format and the reader live in `lmfast.models.dataset` (the contracts layer)."""

from lmfast.models.dataset import (
    DatasetDescription,
    DatasetFormatError,
    PreparedDataset,
    PreparedSplit,
)

__all__ = ["DatasetDescription", "DatasetFormatError", "PreparedDataset", "PreparedSplit"]
