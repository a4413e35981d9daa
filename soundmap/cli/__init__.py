"""Thin Typer command-line layer: parse options, call the library, print. No math, no I/O logic."""
