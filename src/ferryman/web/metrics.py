"""Placeholder router, replaced by the metrics module proper."""

from fastapi import APIRouter

router = APIRouter()
