"""``python -m benchmarks NAME`` runs one benchmark (from a checkout: they are not installed)."""

from benchmarks.cli import bench

bench(prog_name="python -m benchmarks")
