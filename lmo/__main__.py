from lmo.cli import main

raise SystemExit(main())
