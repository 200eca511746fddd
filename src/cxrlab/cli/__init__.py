"""Thin Typer commands over the importable pipelines."""
