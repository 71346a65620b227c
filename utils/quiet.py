"""Keep what a user must see, silence what is noise."""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """Call before TensorFlow is first imported (directly, or by TensorBoard): no INFO or
    WARNING lines from its C++ core and no oneDNN banner. TensorFlow only reads and writes
    records and event files here, so oneDNN's faster kernels buy nothing. Values already set
    in the environment win."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
