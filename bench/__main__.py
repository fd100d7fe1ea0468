"""``python -m bench``: run the benchmark (``--help`` lists the options)."""

from bench.runner import main

raise SystemExit(main())
