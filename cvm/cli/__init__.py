"""The `cvm` command line: `cvm VERB [--flagfile FILE] [--flag value ...]`."""
