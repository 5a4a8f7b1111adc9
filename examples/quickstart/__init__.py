"""The quickstart's app (docs/quickstart.md)."""
