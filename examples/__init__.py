"""Runnable ferryman pipelines; run them from the repository root."""
