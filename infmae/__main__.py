from infmae.cli import main

raise SystemExit(main())
