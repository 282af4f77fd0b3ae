from tabad.cli import main

raise SystemExit(main())
