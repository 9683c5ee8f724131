"""Typed application state of the aiohttp app."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from api.producer import AsyncProducer
from api.service import RecommendationService
from store.lifecycle import Lifecycle
from tandem.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
PRODUCER = web.AppKey("producer", AsyncProducer)
SERVICE = web.AppKey("service", RecommendationService)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
OUTCOME = web.RequestKey("outcome", str)
