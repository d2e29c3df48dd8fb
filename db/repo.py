"""Transitional: the repository was split into ``db.queue``, ``db.decisions``,
``db.versions``, ``db.audit``, ``db.leases``, ``db.metrics``, ``db.autoscaling`` and
``db.flags``. This module re-exports them for the callers not yet moved; it goes away
once none imports it."""

from db.audit import *  # noqa: F403
from db.autoscaling import *  # noqa: F403
from db.decisions import *  # noqa: F403
from db.flags import *  # noqa: F403
from db.leases import *  # noqa: F403
from db.metrics import *  # noqa: F403
from db.queue import *  # noqa: F403
from db.versions import *  # noqa: F403
