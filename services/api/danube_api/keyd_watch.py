"""The self-healing of keyd's cache: a background task of the lifespan that pings keyd
about once a second and, whenever it sees a keyd boot id it has not loaded the running
jobs into, loads them (design, section 5). The first boot id it sees after the API
starts counts as new: keyd may have restarted while the API was down.

A failed reload is tried again at the next ping; the boot id only counts as loaded once
every running job's secrets went in.
"""

from __future__ import annotations

import asyncio
from typing import Final

from danube_api.app_state import AppState
from danube_api.job_lifecycle import reload_running_jobs
from danube_shared.errors import DanubeError
from danube_shared.logs import get_logger

log = get_logger(__name__)

PING_INTERVAL_S: Final = 1.0


async def check_keyd(state: AppState) -> None:
    """One round: ping keyd, reload the running jobs if its boot id is new to us."""
    try:
        boot_id = (await state.keyd.ping()).boot_id
    except DanubeError as exc:
        log.debug("keyd ping failed", error=exc.code)
        return
    if boot_id == state.keyd_boot_id:
        return
    try:
        counts = await reload_running_jobs(state)
    except DanubeError as exc:
        log.warning(
            "keyd reload failed; retrying", boot_id=boot_id, error=exc.code, detail=exc.message
        )
        return
    state.keyd_boot_id = boot_id
    log.info(
        "keyd cache reloaded",
        boot_id=boot_id,
        jobs=counts.jobs,
        secret_count=counts.secret_count,
        expired_jobs=counts.expired,
    )


async def watch_keyd(state: AppState, interval_s: float = PING_INTERVAL_S) -> None:
    """Run `check_keyd` every `interval_s` until cancelled."""
    while True:
        try:
            await check_keyd(state)
        except Exception:
            # The watcher must outlive any one bad round.
            log.exception("keyd watch round failed")
        await asyncio.sleep(interval_s)
