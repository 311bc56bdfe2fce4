"""Workers: the identities that claim and run jobs, each with its API tokens.

Works on a synchronous `Session`, inside a unit of work (DESIGN 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from danube_shared.db.error_translation import is_unique_violation
from danube_shared.db.ids import new_id
from danube_shared.db.schema import ApiToken, Worker
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, NotFound


class WorkerRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, *, name: str) -> Worker:
        """A new worker; `Conflict` if the name is taken (also by a revoked worker)."""
        worker = Worker(id=new_id(), name=name, created_at=utcnow())
        self._session.add(worker)
        try:
            self._session.flush()
        except sa_exc.IntegrityError as error:
            if is_unique_violation(error):
                raise Conflict(f"a worker named {name!r} already exists") from error
            raise
        return worker

    def get(self, worker_id: str) -> Worker:
        worker = self._session.get(Worker, worker_id)
        if worker is None:
            raise NotFound(f"worker {worker_id} not found")
        return worker

    def find_by_name(self, name: str) -> Worker | None:
        return self._session.scalars(select(Worker).where(Worker.name == name)).one_or_none()

    def list_workers(self) -> Sequence[Worker]:
        """Every worker, revoked ones too, by name."""
        return self._session.scalars(select(Worker).order_by(Worker.name)).all()

    def revoke(self, worker_id: str, *, now: datetime) -> Worker:
        """Revoke the worker and every token of it; `NotFound` if there is no such worker.
        Revoking a revoked worker changes nothing. The row stays, so the jobs it ran
        still name it."""
        worker = self.get(worker_id)
        if worker.revoked_at is None:
            worker.revoked_at = now
        self._session.execute(
            update(ApiToken)
            .where(ApiToken.worker_id == worker_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session="fetch")
        )
        self._session.flush()
        return worker
