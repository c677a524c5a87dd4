"""Sub-commands of ``distst``; each module registers one parser (see ``distst.cli.COMMANDS``)."""
