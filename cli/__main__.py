"""``python -m gruengine_cli``: the ``gruengine`` command without its console script."""
from .main import main

if __name__ == "__main__":
    main()
