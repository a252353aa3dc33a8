"""`python -m majority_kernels ...`: the `majority-kernels` command."""

from .cli import main

raise SystemExit(main())
