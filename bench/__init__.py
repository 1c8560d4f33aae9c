"""bench: benchmarks, one entry point `python -m bench NAME [options]`. Each prints a readable
table and, as its last line, one JSON object with its figures.
"""
