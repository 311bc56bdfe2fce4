"""A writer process for the kill -9 test (run as a script, not collected by pytest).

    python writer_process.py DATABASE_PATH PIPELINE_ID

Creates jobs of the pipeline one write transaction at a time, forever, through
`Database.write()`, and prints each job's id only after its transaction has committed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import ArtifactRepository, JobRepository


async def write_forever(path: Path, pipeline_id: str) -> None:
    db = Database.open(DatabaseSettings(path=path))
    while True:

        def writes(session: Session) -> Any:
            job = JobRepository(session).create(pipeline_id)
            ArtifactRepository(session).create(
                job.id, name="log", size_bytes=1, sha256="0" * 64, uri="file:///log"
            )
            return (job,)

        (job,) = await db.write(writes)
        print(job.id, flush=True)


if __name__ == "__main__":
    asyncio.run(write_forever(Path(sys.argv[1]), sys.argv[2]))
