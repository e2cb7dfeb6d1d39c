"""Benchmarks of the exporter at scale (`python -m bench`): scrape path, collection, memory."""
