"""Typed application state of the aiohttp app."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from tandem.api.producer import AsyncProducer
from tandem.api.service import RecommendationService
from tandem.contracts.settings import Settings
from tandem.store.admin import VersionAdmin
from tandem.store.hidden import HiddenItems

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
PRODUCER = web.AppKey("producer", AsyncProducer)
SERVICE = web.AppKey("service", RecommendationService)
ADMIN = web.AppKey("admin", VersionAdmin)
HIDDEN = web.AppKey("hidden", HiddenItems)
OUTCOME = web.RequestKey("outcome", str)
