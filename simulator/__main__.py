"""`python -m simulator`: the simulator subcommand on its own."""

from simulator.command import main

raise SystemExit(main())
