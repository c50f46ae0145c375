"""Whether a process of this host still runs: shared by the save temporaries' clean-up and the corpus build lock."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts as alive: it may be writing now)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
