"""Placeholder router, replaced by the api module proper."""

from fastapi import APIRouter

router = APIRouter()
