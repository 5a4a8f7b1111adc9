"""The demo pipeline: `make demo` runs it (see run_demo.py)."""
