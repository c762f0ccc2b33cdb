from guardrt.cli import main

raise SystemExit(main())
