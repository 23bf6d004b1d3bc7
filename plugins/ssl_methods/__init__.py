"""Built-in SSL methods: moco, simclr, region_aware."""
