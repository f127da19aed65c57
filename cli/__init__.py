"""The click application: argument parsing and printing only, no numerics.

Installed as the package ``gruengine_cli`` (the ``gruengine`` command, ``python -m gruengine_cli``).
"""
