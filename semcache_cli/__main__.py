from semcache_cli.cli import main

main()
