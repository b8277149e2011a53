from fedseed.cli import main

raise SystemExit(main())
