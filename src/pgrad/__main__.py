from pgrad.cli import main

raise SystemExit(main())
