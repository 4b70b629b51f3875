from meterway.cli import main

raise SystemExit(main())
