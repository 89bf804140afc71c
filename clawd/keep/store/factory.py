"""Builds the repository the settings ask for."""

from __future__ import annotations

from clawd.config.settings import Settings, self_instance
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.pg_sink import PgSink
from clawd.keep.store.pg_store import PgStore
from clawd.keep.store.repository import FleetRepository, Rebuilders
from clawd.keep.store.spool import Spool


def build_sink(settings: Settings) -> PgSink:
    pg = settings.postgres

    async def connect() -> PgStore:
        return await PgStore.open(pg, daemon=True)

    return PgSink(connect, Spool(settings.spool_dir), settings.storage)


def build_repository(settings: Settings) -> FleetRepository:
    sink = build_sink(settings) if settings.backend == "postgres" else None
    return FleetRepository(
        JsonStore(settings.home),
        self_instance(settings),
        sink,
        rebuild=Rebuilders(sink_for=build_sink, instance_for=self_instance),
    )
