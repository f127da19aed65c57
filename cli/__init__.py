"""The click application: argument parsing and printing only, no numerics."""
