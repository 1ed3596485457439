from sentiguard.cli import main

raise SystemExit(main())
