"""The `phub` command line: thin Typer commands over `perfusion_hub.Hub`."""
