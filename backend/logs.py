"""How labelloop's processes log: one format, and third-party chatter kept to its warnings.

Lightning announces hardware and tips on every fit, APScheduler logs every housekeeping run at
INFO (every ``loop.poll_s``), werkzeug every request and Alembic its migration context each time
a store opens; none of it says what labelloop did. Lightning 2.6 on torch 2.13 also warns about
its own use of torch's pytree API at every fit.
"""

from __future__ import annotations

import logging
import warnings

#: Loggers held at WARNING (or the chosen level when that is higher).
CHATTY = ("lightning.pytorch", "lightning.fabric", "apscheduler", "werkzeug", "alembic")


def quiet_third_party(level: int = logging.WARNING) -> None:
    """Hold :data:`CHATTY` at ``max(WARNING, level)`` and drop Lightning's pytree warning."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning
    )


def configure_logging(level: str) -> None:
    """Log at ``level`` (a :mod:`logging` level name) with timestamps; third parties quieted."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_third_party(getattr(logging, level))
