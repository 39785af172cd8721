"""python -m riskd"""

from riskd.cli import main

raise SystemExit(main())
