"""The one exception type that attnguide raises for bad user input.

`AttnGuideError` subclasses `ValueError`, so ordinary ``except ValueError``
code keeps working; the CLI catches it (and `FileNotFoundError`) and prints
its message as one line instead of a traceback.
"""

from __future__ import annotations


class AttnGuideError(ValueError):
    """Bad input: the message names what was wrong and how to fix it."""
