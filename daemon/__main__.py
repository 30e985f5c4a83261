"""``python -m daemon`` is ``easel``."""

from daemon.cli import main

raise SystemExit(main())
