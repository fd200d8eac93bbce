from flywheel.cli import main

raise SystemExit(main())
