"""Thin command-line entry points: parse, build from config, call library functions."""
