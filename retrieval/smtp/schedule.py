"""When the queue tries again, warns and gives up: pure functions of the [smtp] settings.

Ages are seconds since the message arrived; `config` is the whole Config or
its SmtpConfig (anything with retry_min, retry_max, delay_warning and
max_queue_lifetime), so tests can pass a small stand-in.
"""

from __future__ import annotations

import datetime
from typing import Any


def _smtp(config: Any) -> Any:
    return getattr(config, "smtp", config)


def next_retry(attempts: int, config: Any) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1 for the first).

    retry_min, then doubling, never above retry_max: with the defaults
    300, 600, 1200, 2400, 4000, 4000 ... as Postfix's backoff does."""
    smtp = _smtp(config)
    low, high = float(smtp.retry_min), float(smtp.retry_max)
    n = max(attempts, 1) - 1
    if n >= 64:  # 2**64 * anything positive is past any cap; avoid huge floats
        return high
    return min(low * (2**n), high)


def delay_warning_due(age: float, warned: bool, config: Any) -> bool:
    """Time for the one "still trying" report (off when delay_warning is 0)."""
    warning = float(_smtp(config).delay_warning)
    return not warned and warning > 0 and age >= warning


def expired(age: float, config: Any) -> bool:
    """The message has been queued for max_queue_lifetime: give up, send the failure report."""
    return age >= float(_smtp(config).max_queue_lifetime)


def retry_until(arrival: datetime.datetime, config: Any) -> datetime.datetime:
    """When the queue will give up on a message that arrived at `arrival` (Will-Retry-Until)."""
    return arrival + datetime.timedelta(seconds=float(_smtp(config).max_queue_lifetime))
