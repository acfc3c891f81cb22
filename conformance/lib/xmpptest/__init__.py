"""Shared helpers for the conformance suites (see ../../README.md)."""
