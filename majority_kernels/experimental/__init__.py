"""Experimental code, kept for the benchmarks that decide whether it is worth finishing. No layer uses it, and
nothing here is registered (no op, no backend) until its module is imported."""
