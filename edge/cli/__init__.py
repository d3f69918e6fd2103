"""The `edge` command line: thin argparse subcommands over the SDK."""
