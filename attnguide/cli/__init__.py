"""The ``attnguide`` command line (typer): :mod:`attnguide.cli.main` builds the app and
``main()``; each other module registers one group of commands. They parse options and
call :mod:`attnguide.tasks`."""
