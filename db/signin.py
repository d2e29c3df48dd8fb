"""Failed sign-ins, per account and per client address, for throttling across processes.

The caller owns the transaction. Old rows are pruned on every write (a row older than
the throttle window plus the lock-out can no longer lock anyone out), so the table
stays small whatever an attacker sends.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.auth import ThrottlePolicy
from db.models import SignInFailureRow

MAX_NAME = 64


def _clip(text: str) -> str:
    return text[:MAX_NAME]


def record_failure(s: Session, *, account: str, client: str, now: float,
                   policy: ThrottlePolicy) -> None:
    s.add(SignInFailureRow(account=_clip(account), client=_clip(client), at=now))
    s.execute(delete(SignInFailureRow)
              .where(SignInFailureRow.at < now - policy.window_s - policy.lockout_s))


def failures(s: Session, *, account: str | None = None, client: str | None = None,
             since: float) -> list[float]:
    """Times of the failed sign-ins of ``account`` (or from ``client``) since ``since``."""
    F = SignInFailureRow
    q = select(F.at).where(F.at >= since).order_by(F.at).limit(10_000)
    if account is not None:
        q = q.where(F.account == _clip(account))
    if client is not None:
        q = q.where(F.client == _clip(client))
    return list(s.scalars(q))


def clear_account(s: Session, *, account: str) -> None:
    """A successful sign-in forgets the account's earlier failures."""
    s.execute(delete(SignInFailureRow).where(SignInFailureRow.account == _clip(account)))
