"""Command-line front ends: click commands that build a config and call one function."""
