"""`python -m exporter.simulator`: the simulator subcommand on its own."""

from exporter.simulator.command import main

raise SystemExit(main())
