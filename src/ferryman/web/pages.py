"""Placeholder router, replaced by the pages module proper."""

from fastapi import APIRouter

router = APIRouter()
