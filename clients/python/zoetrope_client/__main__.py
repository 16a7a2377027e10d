from zoetrope_client.cli import main

raise SystemExit(main())
