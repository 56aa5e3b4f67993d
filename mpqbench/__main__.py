from mpqbench.cli import main

raise SystemExit(main())
